"""Small synthetic datasets on disk, in the exact official layouts, for the test suite.

``write_cifar_archive`` writes a ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``
look-alike (same member names, same pickled dicts with bytes keys, uint8 rows
of 3072 values) that is tiny and *learnable*: every class has its own colour
and stripe pattern under noise, so a small ViT's loss drops within a few steps.
``write_image_folder`` writes a ``DIR/train/<class>/*.png`` tree.
"""
from __future__ import annotations

import colorsys
import io
import pickle
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2")
assert len(CIFAR100_NAMES) == 100 and len(CIFAR100_COARSE_NAMES) == 20


def class_pattern(label: int, size: int = 32) -> np.ndarray:
    """The noise-free float image (size x size x 3, 0..255) of a class: a colour of its
    own (hues spread by the golden ratio, two saturations, two brightnesses) modulated
    by stripes whose direction and period also depend on the class."""
    hue = (label * 0.618033988749895) % 1.0
    saturation, value = (0.9, 0.55)[(label // 3) % 2], (0.95, 0.6)[(label // 6) % 2]
    colour = np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    coordinate = (xx, yy, xx + yy, xx - yy)[label % 4]
    period = 4.0 + 3.0 * ((label // 4) % 3)
    stripes = 0.5 + 0.5 * np.sin(2.0 * np.pi * coordinate / period)
    return colour * (0.55 + 0.45 * stripes[:, :, None])


def _images(labels: np.ndarray, rng: np.random.Generator, size: int = 32, noise: float = 18.0) -> np.ndarray:
    """uint8 N x size x size x 3 images of the given labels."""
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        image = class_pattern(int(label), size) + rng.normal(0.0, noise, (size, size, 3))
        out[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int64)


def _rows(images: np.ndarray) -> np.ndarray:
    """HWC images to CIFAR's rows: 1024 red, then 1024 green, then 1024 blue values."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _add(tar: tarfile.TarFile, name: str, obj: object) -> None:
    payload = pickle.dumps(obj, protocol=2)
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def write_cifar_archive(path: str | Path, dataset: str = "cifar10", train_per_class: int = 10,
                        test_per_class: int = 4, seed: int = 0, train_classes: Sequence[int] | None = None,
                        test_classes: Sequence[int] | None = None) -> Path:
    """Write a small ``cifar-10-python.tar.gz`` (``dataset="cifar10"``) or
    ``cifar-100-python.tar.gz`` (``"cifar100"``) at ``path`` and return the path.

    CIFAR-10's training images are spread over ``data_batch_1..5`` like the
    original's. CIFAR-100's coarse labels are placeholders (``fine // 5``); ppadapt
    uses only the fine labels. ``train_classes`` / ``test_classes`` (default: all) are
    the classes that have training / test images: the others have none there, as in an
    archive cut down by hand.
    """
    if dataset not in ("cifar10", "cifar100"):
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = CIFAR10_NAMES if dataset == "cifar10" else CIFAR100_NAMES
    train_labels = _labels(len(names), train_per_class, rng)
    test_labels = _labels(len(names), test_per_class, rng)
    if train_classes is not None:
        train_labels = train_labels[np.isin(train_labels, list(train_classes))]
    if test_classes is not None:
        test_labels = test_labels[np.isin(test_labels, list(test_classes))]
    train_rows = _rows(_images(train_labels, rng))
    test_rows = _rows(_images(test_labels, rng))

    with tarfile.open(path, "w:gz") as tar:
        if dataset == "cifar10":
            _add_dir(tar, "cifar-10-batches-py")
            chunks = np.array_split(np.arange(len(train_labels)), 5)
            for number, chunk in enumerate(chunks, start=1):
                _add(tar, f"cifar-10-batches-py/data_batch_{number}", {
                    b"batch_label": f"training batch {number} of 5".encode(),
                    b"labels": train_labels[chunk].tolist(),
                    b"data": train_rows[chunk],
                    b"filenames": [f"train_{i}.png".encode() for i in chunk]})
            _add(tar, "cifar-10-batches-py/test_batch", {
                b"batch_label": b"testing batch 1 of 1", b"labels": test_labels.tolist(),
                b"data": test_rows, b"filenames": [f"test_{i}.png".encode() for i in range(len(test_labels))]})
            _add(tar, "cifar-10-batches-py/batches.meta", {
                b"num_cases_per_batch": len(chunks[0]), b"label_names": [n.encode() for n in names],
                b"num_vis": 3072})
        else:
            _add_dir(tar, "cifar-100-python")
            for split, labels, rows in (("train", train_labels, train_rows), ("test", test_labels, test_rows)):
                _add(tar, f"cifar-100-python/{split}", {
                    b"filenames": [f"{split}_{i}.png".encode() for i in range(len(labels))],
                    b"batch_label": f"{split}ing batch 1 of 1".encode(),
                    b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(),
                    b"data": rows})
            _add(tar, "cifar-100-python/meta", {
                b"fine_label_names": [n.encode() for n in names],
                b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES]})
    return path


def write_image_folder(root: str | Path, classes: Sequence[str] = ("a", "b", "c"), per_class: int = 4,
                       size: int = 40, seed: int = 0) -> Path:
    """Write ``per_class`` RGB PNGs per class into ``root/train/<class>/`` and
    ``root/test/<class>/`` (class patterns as in the CIFAR archives); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            images = _images(np.full(per_class, label), rng, size=size)
            for i, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{name}_{i}.png")
    return root
