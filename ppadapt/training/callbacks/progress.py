"""Paddle's progress bar, numbering the epochs of a resumed run as the whole run's
(``Epoch 3/4``, not ``Epoch 1/2``)."""
from __future__ import annotations

import paddle


class EpochProgBar(paddle.callbacks.ProgBarLogger):
    """``ProgBarLogger`` with the run's epoch numbers when ``fit`` runs only the remaining ones."""

    def __init__(self, log_freq: int = 1, verbose: int = 2, *, epochs: int, start_epoch: int = 0) -> None:
        super().__init__(log_freq=log_freq, verbose=verbose)
        self.total_epochs = epochs
        self.start_epoch = start_epoch

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        self.epochs = self.total_epochs

    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        super().on_epoch_begin(self.start_epoch + (epoch or 0), logs)
