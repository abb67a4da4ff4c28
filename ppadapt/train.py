"""`python ppadapt/train.py --help`: see :mod:`ppadapt.apps.cli`."""
import os
import sys

if __package__ in (None, ""):
    # Run as a script: import the package from the repository root, and keep this
    # folder off sys.path so its modules cannot shadow installed ones.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

from ppadapt.apps.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
