"""The applications behind the command lines: train/transfer, predict, export, bench, report.

``ppadapt/<tool>.py`` are thin script entries over these modules."""
