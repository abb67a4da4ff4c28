"""``bench.py``: time the tuning methods' training and inference steps in one process."""
