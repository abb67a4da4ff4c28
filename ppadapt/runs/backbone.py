"""A backbone loaded once for many tasks: a ppadapt run's model or PaddleClas's weights.

Either is a plain ViT (with the modules a ppadapt model carries from pretraining) in
eval mode, every parameter frozen, with no classifier: each task brings its own head.
Its normalisation and input size come along, as :func:`ppadapt.runs.loading.load_run`
and ``transfer.py --backbone`` take them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paddle.nn as nn

from ..errors import ConfigError
from ..methods import applied_methods, get_method
from ..models.paddleclas_archs import backbone_names, paddleclas_normalization, paddleclas_vit_config
from ..models.build import Architecture, build_backbone, describe_architecture
from .loading import load_run
from .pretrained import SCHEME, is_paddleclas_ref, load_pretrained, paddleclas_name, paddleclas_weights

DEFAULT_WEIGHTS = "final"  # of a run folder: what transfer.py loads as its pretrained backbone by default


@dataclass
class Backbone:
    """The shared network and what every task's inputs need from it."""

    model: Any  # VisionTransformer, eval mode, frozen, head = Identity
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # where it came from, for messages
    weights: Path | None = None
    center_crop: bool = False  # the backbone run evaluated with resize_center_crop

    @property
    def arch(self) -> Architecture:
        return self.model.config

    @property
    def img_size(self) -> int:
        return int(self.model.config.img_size)

    @property
    def carried(self) -> dict[str, dict]:
        """The methods whose modules the backbone carries, with their options."""
        return dict(applied_methods(self.model))

    def describe(self) -> str:
        a = self.arch
        carried = "".join(f", carries {get_method(name).modules or name}" for name in self.carried)
        return f"backbone {self.source}: {describe_architecture(a)}{carried}"


def is_paddleclas_backbone(spec: str | Path) -> bool:
    """``paddleclas:NAME``, or a PaddleClas constructor name that is not also a path here."""
    text = str(spec)
    return is_paddleclas_ref(text) or (text in backbone_names() and not Path(text).exists())


def load_backbone(spec: str | Path, *, weights: str | None = None, weights_file: str | Path | None = None,
                  img_size: int | None = None, patch_size: int | None = None,
                  log: Callable[[str], None] | None = None) -> Backbone:
    """The backbone ``spec`` names: a ppadapt run folder (its ``final.pdparams`` unless
    ``weights`` says ``best``) or checkpoint file, or a PaddleClas ViT (``paddleclas:NAME`` or
    ``NAME``: its ImageNet weights, from the cache or downloaded once, or ``weights_file``).

    A PaddleClas backbone may be built at another ``img_size`` / ``patch_size`` (as with
    ``transfer.py --backbone NAME -o model.img_size=...``): its position embedding and patch
    kernel are resampled when loading. One-line errors (ConfigError, CheckpointError).
    """
    if is_paddleclas_backbone(spec):
        name = paddleclas_name(str(spec)) if is_paddleclas_ref(str(spec)) else str(spec)
        if weights is not None:
            raise ConfigError(f"weights={weights!r} picks a run folder's checkpoint; {spec} is PaddleClas's "
                              "(pass a local file of its weights as weights_file / --backbone-file)")
        return _paddleclas_backbone(name, weights_file, img_size, patch_size, log)
    for value, what in ((weights_file, "a PaddleClas backbone's weights file"), (img_size, "another image size"),
                        (patch_size, "another patch size")):
        if value is not None:
            raise ConfigError(f"{what} applies to a PaddleClas backbone ({SCHEME}NAME); {spec} is a ppadapt run, "
                              "whose geometry is its own")
    path = Path(spec).expanduser()
    run = load_run(path, weights if weights is not None else (DEFAULT_WEIGHTS if path.is_dir() else None))
    model = run.model
    model.head = nn.Identity()  # the run's classifier is no task's
    model.class_num = 0
    center_crop = run.config.stage(run.stage).eval_resize == "resize_center_crop"
    return Backbone(model=model, mean=run.mean, std=run.std, source=str(run.weights), weights=run.weights,
                    center_crop=center_crop)


def _paddleclas_backbone(name: str, weights_file: str | Path | None, img_size: int | None,
                         patch_size: int | None, log: Callable[[str], None] | None) -> Backbone:
    try:
        arch = paddleclas_vit_config(name)
        mean, std = paddleclas_normalization(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    changes = {k: v for k, v in (("img_size", img_size), ("patch_size", patch_size)) if v is not None}
    for key, value in changes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    arch = dataclasses.replace(arch, **changes)
    if arch.img_size < arch.patch_size:
        raise ConfigError(f"image size {arch.img_size} is smaller than patch size {arch.patch_size}")
    path = Path(weights_file).expanduser() if weights_file is not None else paddleclas_weights(name, log or print)
    model = build_backbone(arch, 0)
    load_pretrained(model, path, log or (lambda line: None))
    model.eval()
    for param in model.parameters():
        param.stop_gradient = True
    return Backbone(model=model, mean=tuple(mean), std=tuple(std),  # type: ignore[arg-type]
                    source=f"{SCHEME}{name} ({path})", weights=path)


__all__ = ["Backbone", "DEFAULT_WEIGHTS", "is_paddleclas_backbone", "load_backbone"]
