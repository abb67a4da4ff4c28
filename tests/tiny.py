"""Tiny models and random data for fast tests of ``paddle.Model.fit`` loops."""
from __future__ import annotations

import signal

import numpy as np
import paddle
from paddle.static import InputSpec

from ppadapt.models import VisionTransformer, ViTConfig

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
NUM_CLASSES = 10


class RandomImages(paddle.io.Dataset):
    """``n`` random 3x32x32 images with random labels, fixed by ``seed``."""

    def __init__(self, n: int, seed: int = 0, num_classes: int = NUM_CLASSES):
        rng = np.random.default_rng(seed)
        self.images = rng.standard_normal((n, 3, 32, 32)).astype("float32")
        self.labels = rng.integers(0, num_classes, (n, 1)).astype("int64")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def tiny_vit(class_num: int = NUM_CLASSES, **overrides) -> VisionTransformer:
    return VisionTransformer(ViTConfig(**{**TINY, **overrides}), class_num=class_num)


def tiny_model(lr: float = 0.1, seed: int = 0) -> paddle.Model:
    """A prepared ``paddle.Model``: tiny ViT, Momentum with a float LR, top-1/top-5 accuracy."""
    paddle.seed(seed)
    net = tiny_vit()
    model = paddle.Model(net, inputs=[InputSpec([None, 3, 32, 32], "float32", "image")],
                         labels=[InputSpec([None, 1], "int64", "label")])
    model.prepare(paddle.optimizer.Momentum(learning_rate=lr, momentum=0.9, parameters=net.parameters()),
                  paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy(topk=(1, 5)))
    return model


class InterruptAt(paddle.callbacks.Callback):
    """Ctrl-C (SIGINT to this process) before batch ``batch`` of epoch ``epoch`` (0-based, of this fit)."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at, self.epoch = (epoch, batch), 0

    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        self.epoch = epoch or 0

    def on_train_batch_begin(self, step, logs=None) -> None:
        if (self.epoch, step) == self.at:
            signal.raise_signal(signal.SIGINT)
