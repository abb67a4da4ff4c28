"""A user's own images laid out as ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``.

Every image is decoded once, at construction, converted to RGB and resized to
the model's input size: unreadable files are found (and reported) before
training starts instead of crashing a loader worker mid-epoch, and the arrays of
the small folders this is meant for fit comfortably in memory.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, PPAdaptWarning
from .arrays import Splits, resize_image
from .images import IMAGE_SUFFIX_TEXT, decode_image, first_paths, is_image_name

FOLDER_MEAN = (0.5, 0.5, 0.5)
FOLDER_STD = (0.5, 0.5, 0.5)
_LAYOUT = "DIR/train/<class>/*, DIR/test/<class>/*"


def load_image_folder(data_dir: str | Path | None, img_size: int, val_dir: str | Path | None = None) -> Splits:
    """Decode both splits to uint8 ``img_size`` x ``img_size`` x 3 RGB arrays.

    Class names are the sorted subfolders of ``train``; ``test`` must have the same
    ones. Files with another suffix are ignored; image files that do not decode are
    skipped with one warning that counts them. ``val_dir`` (``<class>/*`` with the
    train classes, e.g. ``DIR/val``): a given validation split, decoded the same way.
    """
    if not data_dir:
        raise DataError(f"no image folder given (pass --data-dir DIR with {_LAYOUT})")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root} (pass --data-dir DIR with {_LAYOUT})")
    split_dirs = {split: root / split for split in ("train", "test")}
    for split, path in split_dirs.items():
        if not path.is_dir():
            raise DataError(f"image folder {root} has no '{split}' subfolder (lay it out as {_LAYOUT})")

    class_names = _class_dirs(split_dirs["train"])
    test_names = _class_dirs(split_dirs["test"])
    if test_names != class_names:
        missing = sorted(set(class_names) - set(test_names))
        extra = sorted(set(test_names) - set(class_names))
        raise DataError(f"{split_dirs['test']} must have the same class folders as {split_dirs['train']} "
                        f"(missing in test: {missing or 'none'}, not in train: {extra or 'none'})")

    if val_dir:
        split_dirs["val"] = _val_root(Path(val_dir).expanduser(), class_names)
    files = {split: _image_files(path, class_names) for split, path in split_dirs.items()}
    if not files["train"] and not files["test"]:
        raise DataError(f"no images in {root} (expected {IMAGE_SUFFIX_TEXT} files in {_LAYOUT})")
    if len(class_names) < 2:
        raise DataError(f"image folder {root} has {len(class_names)} class folder(s) in train, "
                        f"a classifier needs at least 2 (add DIR/train/<class>/ folders)")

    skipped: list[Path] = []
    arrays = {split: _decode_all(items, img_size, skipped) for split, items in files.items()}
    if skipped:
        shown = first_paths(skipped)
        total = sum(len(items) for items in files.values())
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) of {total} in {root}: {shown} "
                      "(not decodable as images; the run goes on without them)", PPAdaptWarning, stacklevel=2)

    train_images, train_labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    empty = [name for i, name in enumerate(class_names) if not np.any(train_labels == i)]
    if empty:
        raise DataError(f"no readable training images for class(es) {empty} in {split_dirs['train']} "
                        "(add images or remove those folders)")
    if len(test_images) == 0:
        raise DataError(f"no readable test images in {split_dirs['test']} (add images to its class folders)")
    val_images, val_labels = arrays.get("val", (None, None))  # every class has some: checked by the caller
    return Splits(train_images, train_labels, test_images, test_labels, class_names, val_images, val_labels)


def _val_root(val_dir: Path, class_names: list[str]) -> Path:
    """The given validation folder, checked to hold only the training classes' folders."""
    if not val_dir.is_dir():
        raise DataError(f"validation folder not found: {val_dir} (set val_dir to a folder with <class>/* "
                        "subfolders named like the train ones, e.g. DIR/val)")
    extra = sorted(set(_class_dirs(val_dir)) - set(class_names))
    if extra:
        raise DataError(f"validation folder {val_dir} has class folders that train lacks: {extra} (use the "
                        "train class names)")
    return val_dir


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(split_dir: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    return [(path, label)
            for label, name in enumerate(class_names)
            if (split_dir / name).is_dir()
            for path in sorted((split_dir / name).iterdir())
            if path.is_file() and is_image_name(path)]


def _decode_all(items: list[tuple[Path, int]], img_size: int,
                skipped: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(items), img_size, img_size, 3), dtype=np.uint8)
    labels = np.empty(len(items), dtype=np.int64)
    count = 0
    for path, label in items:
        image = decode_image(path)
        if image is None:
            skipped.append(path)
            continue
        images[count] = resize_image(image, img_size)
        labels[count] = label
        count += 1
    return images[:count], labels[:count]
