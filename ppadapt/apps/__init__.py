"""The applications behind the command lines: train/transfer, predict, export, bench, report.

``ppadapt/<tool>.py`` are thin script entries over these modules; what they share (the
argument parser, one ``error:`` line and exit status 2 for a user error) is :mod:`.tool`."""
