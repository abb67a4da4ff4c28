"""One entry point from a dataset name to ready-to-load train and test datasets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import paddle

from ..errors import DataError
from .arrays import ArrayDataset, Splits, select_classes
from .cifar import cifar_spec, load_cifar
from .digits import DIGITS_MEAN, DIGITS_STD, ROLES, load_digits_splits
from .folder import FOLDER_MEAN, FOLDER_STD, load_image_folder
from .split import check_split, stratified_split
from .transforms import Pipeline

DATASETS = ("cifar10", "cifar100", "digits", "folder")
KNOWN_CLASS_COUNTS = {"cifar10": 10, "cifar100": 100, "digits": 5}


@dataclass
class DatasetBundle:
    """What a training stage needs from its data: both splits plus what a checkpoint
    must record to classify new images the same way (class names, normalisation).
    ``val``: the validation split that chooses the best epoch (None: chosen on test)."""

    train: paddle.io.Dataset
    test: paddle.io.Dataset
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    val: paddle.io.Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def build_datasets(name: str, *, role: str = "pretrain", img_size: int = 32,
                   data_file: str | Path | None = None, data_dir: str | Path | None = None,
                   classes: Sequence[int] | None = None, augment: bool = True,
                   normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                   pipeline: Pipeline = Pipeline(), val_split: float = 0.0,
                   val_dir: str | Path | None = None, seed: int = 0) -> DatasetBundle:
    """Load dataset ``name`` (one of :data:`DATASETS`) for a training stage.

    ``role`` ("pretrain" / "transfer") picks digits 0-4 or 5-9 and is ignored by
    the other datasets. ``classes`` keeps those original class indices, relabelled
    0..k-1 in the given order (``None`` or empty keeps all). Images stay at their
    stored size in memory and the transforms resize each one to ``img_size`` as it is
    read: CIFAR-10 upsampled to 224 px up front would hold 7.5 GB. ``augment=False`` gives the train split the
    deterministic eval transform; ``pipeline`` picks the augmentation and evaluation resize
    (:class:`~ppadapt.data.transforms.Pipeline`; the default is the tutorial's).
    ``normalization`` = ``(mean, std)`` replaces the dataset's own statistics: pretrained weights expect the normalisation they were
    trained with (PaddleClas's ViTs: 0.5 / 0.5). ``val_split`` > 0 holds out that share of
    every class's training images (seeded by ``seed``, :mod:`.split`) as ``val``; ``val_dir``
    (image folders only) gives the validation images instead. Every user-fixable problem
    raises ``DataError``.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}' (choose one of {', '.join(DATASETS)})")
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")

    flip = True
    if name == "digits":
        splits: Splits = load_digits_splits(role)
        mean, std, flip = DIGITS_MEAN, DIGITS_STD, False  # a mirrored digit is another symbol
    elif name == "folder":
        splits = load_image_folder(data_dir, pipeline.decode_size(img_size), val_dir)
        mean, std = FOLDER_MEAN, FOLDER_STD
    else:
        spec = cifar_spec(name)
        splits = load_cifar(name, data_file)
        mean, std = spec.mean, spec.std

    if normalization is not None:
        mean, std = (tuple(float(v) for v in values) for values in normalization)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"normalization must be (mean, std) of 3 values each, std > 0; got {normalization!r}")

    if val_dir and name != "folder":
        raise DataError(f"{role}.val_dir is for image folders (--data-dir); for {name} use {role}.val_split")

    splits = select_classes(splits, classes)
    _check_not_empty(splits, name, role, classes, data_file or data_dir)
    train_images, train_labels = splits.train_images, splits.train_labels
    val_images, val_labels = splits.val_images, splits.val_labels
    if val_labels is not None:
        missing = [n for i, n in enumerate(splits.class_names) if not (val_labels == i).any()]
        if missing:
            raise DataError(f"{role}.val_dir {val_dir} has no readable images for class(es) {missing}: every "
                            "class needs validation images (add them to its <class>/ folders)")
    elif val_split:
        check_split(train_labels, val_split, splits.class_names, f"{role}.val_split")
        keep, held = stratified_split(train_labels, val_split, seed)
        train_images, train_labels, val_images, val_labels = (train_images[keep], train_labels[keep],
                                                              train_images[held], train_labels[held])
    train_transform, eval_transform = pipeline.transforms(img_size, mean, std, flip=flip, augment=augment)
    return DatasetBundle(train=ArrayDataset(train_images, train_labels, train_transform),
                         test=ArrayDataset(splits.test_images, splits.test_labels, eval_transform),
                         class_names=list(splits.class_names), mean=tuple(mean), std=tuple(std),
                         val=None if val_labels is None else ArrayDataset(val_images, val_labels, eval_transform))


def _check_not_empty(splits: Splits, name: str, role: str, classes: Sequence[int] | None,
                     source: str | Path | None) -> None:
    """A DataError naming the split, the classes and the fix when a split has no images:
    training needs batches and evaluation needs test images (an empty split would fail
    deep inside Paddle, after the model is built)."""
    where = source or name
    for split, labels, purpose in (("train", splits.train_labels, "train on"),
                                   ("test", splits.test_labels, "evaluate on")):
        if len(labels):
            continue
        if classes:
            selected = ", ".join(f"{c} ({n})" for c, n in zip(classes, splits.class_names))
            raise DataError(f"the {split} split of {where} has no images of the selected classes {selected}: "
                            f"nothing to {purpose} (choose classes that have {split} images with "
                            f"-o {role}.classes=[...], or use data whose {split} split has these classes)")
        raise DataError(f"the {split} split of {where} has no images: nothing to {purpose} "
                        f"(use a complete {name} dataset)")


def class_count(cfg, stage: str) -> int:
    """Number of classes of a stage's dataset without loading it (for ``--dry-run``)."""
    st = cfg.stage(stage)
    if st.classes:
        return len(st.classes)
    if st.dataset in KNOWN_CLASS_COUNTS:
        return KNOWN_CLASS_COUNTS[st.dataset]
    train = Path(st.data_dir or "") / "train"
    if not st.data_dir or not train.is_dir():
        raise DataError(f"image folder {train} not found (pass --data-dir DIR with DIR/train/<class>/*)")
    return sum(1 for p in train.iterdir() if p.is_dir())
