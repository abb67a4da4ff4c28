"""The validation split's loss and accuracy after each of ``fit``'s evaluations, so the best
epoch is chosen without looking at the test set.

``paddle.Model.fit`` takes one ``eval_data``: it stays the test set (the numbers a run
reports, VisualDL's ``eval/*``), exactly as without a validation split. This callback then
evaluates the validation loader itself, with the network in eval mode and metric objects
of its own: fit's shared metrics and logs are not touched, and no callback's eval hooks
run a second time (``Model.evaluate`` inside ``fit`` would call them all again). It reads no
random numbers, so a resumed run stays the uninterrupted one.
"""
from __future__ import annotations

import paddle

from .loss import LossMean


def evaluate_split(network: paddle.nn.Layer, loader: paddle.io.DataLoader, topk: tuple[int, ...],
                   prefix: str = "val_") -> dict[str, float]:
    """``{prefix}loss`` (mean over samples) and ``{prefix}acc_top<k>`` of ``network`` on ``loader``,
    computed as ``fit``'s cross-entropy and ``paddle.metric.Accuracy`` compute them."""
    accuracy = paddle.metric.Accuracy(topk=topk)
    criterion = paddle.nn.CrossEntropyLoss()
    loss = LossMean()
    was_training = network.training
    network.eval()
    try:
        with paddle.no_grad():
            for images, labels in loader:
                logits = network(images)
                loss.add({"loss": float(criterion(logits, labels)), "batch_size": int(labels.shape[0])})
                accuracy.update(accuracy.compute(logits, labels))
    finally:
        if was_training:
            network.train()
    values = accuracy.accumulate()
    values = values if isinstance(values, list) else [values]
    return {f"{prefix}loss": loss.value, **{f"{prefix}{name}": float(v) for name, v in zip(accuracy.name(), values)}}


class ValidationEval(paddle.callbacks.Callback):
    """After every evaluation of ``fit``: the validation metrics in :attr:`last`, for
    :class:`~.best_final.BestAndFinalCheckpoint` (listed after this callback) to record and
    choose the best epoch on, and as VisualDL's ``val/*`` curves beside ``eval/*`` (the
    test set's) when :attr:`vdl` is set (a :class:`~.visualdl_logger.VisualDLLogger`)."""

    def __init__(self, loader: paddle.io.DataLoader, topk: tuple[int, ...], start_epoch: int = 0) -> None:
        super().__init__()
        self.loader = loader
        self.topk = tuple(topk)
        self.start_epoch = start_epoch
        self.epoch = 0
        self.vdl = None
        self.last: dict[str, float] | None = None

    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        self.epoch = epoch or 0

    def on_eval_end(self, logs=None) -> None:
        self.last = evaluate_split(self.model.network, self.loader, self.topk)
        if self.vdl is not None:
            self.vdl.add_scalars({f"val/{k[len('val_'):]}": v for k, v in self.last.items()},
                                 self.start_epoch + self.epoch)
