"""CIFAR-10 / CIFAR-100 read straight from the official ``*-python.tar.gz`` archives.

Reading the archive ourselves (rather than through ``paddle.vision.datasets``)
lets one pass over the file serve both splits, and turns every way a
user-supplied file can be wrong into a one-line :class:`~ppadapt.errors.DataError`.
"""
from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..utils import safe_pickle
from .arrays import Splits


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives inside its archive and how to normalise it."""

    name: str            # dataset name in ppadapt: "cifar10" / "cifar100"
    title: str           # as users know it: "CIFAR-10"
    archive: str         # official file name
    url: str             # Paddle's mirror, used by paddle.dataset.common.download
    md5: str
    prefix: str          # folder of every member inside the archive
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    names_key: bytes
    labels_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_members, self.test_member, self.meta_member)


_PADDLE_MIRROR = "https://dataset.bj.bcebos.com/cifar/"

CIFAR10 = CifarSpec(
    name="cifar10", title="CIFAR-10", archive="cifar-10-python.tar.gz",
    url=_PADDLE_MIRROR + "cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a",
    prefix="cifar-10-batches-py/", train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_member="test_batch", meta_member="batches.meta", names_key=b"label_names",
    labels_key=b"labels", num_classes=10,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))

CIFAR100 = CifarSpec(
    name="cifar100", title="CIFAR-100", archive="cifar-100-python.tar.gz",
    url=_PADDLE_MIRROR + "cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
    prefix="cifar-100-python/", train_members=("train",), test_member="test", meta_member="meta",
    names_key=b"fine_label_names", labels_key=b"fine_labels", num_classes=100,
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))

_SIDE = 32
_ROW = 3 * _SIDE * _SIDE


def cifar_spec(name: str) -> CifarSpec:
    """The spec of ``"cifar10"`` or ``"cifar100"``."""
    for spec in (CIFAR10, CIFAR100):
        if spec.name == name:
            return spec
    raise ValueError(f"not a CIFAR dataset: {name!r}")


def load_cifar(name: str, data_file: str | Path | None = None) -> Splits:
    """Both splits of ``name`` at 32x32, from ``data_file`` or else Paddle's cache.

    With ``data_file`` given no download is ever attempted.
    """
    spec = cifar_spec(name)
    path = _download(spec) if data_file is None else Path(data_file).expanduser()
    return read_cifar_archive(path, spec)


def _download(spec: CifarSpec) -> Path:
    """Paddle's cached copy in ~/.cache/paddle/dataset/cifar, fetched if missing."""
    from paddle.dataset import common  # imported here: it creates Paddle's cache folder on import

    try:
        return Path(common.download(spec.url, "cifar", spec.md5))
    except Exception as exc:  # network, checksum, disk: every cause means "no usable file"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"download of {spec.archive} failed ({reason}); pass --data-file PATH "
                        f"with a local {spec.archive}") from None


def _fix(spec: CifarSpec) -> str:
    return f"pass --data-file with the path to {spec.archive}"


def read_cifar_archive(path: str | Path, spec: CifarSpec) -> Splits:
    """Read train and test split of ``spec`` from the archive at ``path`` in one pass.

    Images come back as uint8 N x 32 x 32 x 3 (RGB), labels as int64.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path} ({_fix(spec)})")
    if not path.is_file():
        raise DataError(f"data file is not a file: {path} ({_fix(spec)})")

    batches = _read_members(path, spec)
    train = [_batch_arrays(batches[m], m, path, spec) for m in spec.train_members]
    test_images, test_labels = _batch_arrays(batches[spec.test_member], spec.test_member, path, spec)
    class_names = _class_names(batches[spec.meta_member], path, spec)
    return Splits(train_images=np.concatenate([images for images, _ in train]),
                  train_labels=np.concatenate([labels for _, labels in train]),
                  test_images=test_images, test_labels=test_labels, class_names=class_names)


def _read_members(path: Path, spec: CifarSpec) -> dict[str, Any]:
    """Unpickle the members of ``spec`` in archive order, stopping once all are read."""
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, zlib.error, OSError):
        problem = "is empty" if path.stat().st_size == 0 else "is not a gzip-compressed tar archive"
        raise DataError(f"{path} {problem} (truncated or corrupt download?); {_fix(spec)}") from None
    wanted = {spec.prefix + member: member for member in spec.members}
    found: dict[str, Any] = {}
    recognised = False
    try:
        with tar:
            for info in tar:
                name = info.name[2:] if info.name.startswith("./") else info.name
                other = _other_variant(name, spec)
                if other is not None:
                    raise DataError(f"{path} is a {other.title} archive but dataset '{spec.name}' needs "
                                    f"{spec.archive} ({_fix(spec)}, or use dataset '{other.name}')")
                recognised = recognised or name.startswith(spec.prefix)
                if name in wanted and info.isfile():
                    found[wanted[name]] = _unpickle(tar.extractfile(info))
                    if len(found) == len(wanted):
                        break
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, pickle.UnpicklingError, ValueError,
            TypeError, AttributeError, ImportError, IndexError, KeyError, MemoryError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read {path}: truncated or corrupt ({reason}); download {spec.archive} "
                        f"again and {_fix(spec)}") from None
    if not recognised:
        raise DataError(f"{path} is not a {spec.title} archive (no {spec.prefix} members); {_fix(spec)}")
    missing = [m for m in spec.members if m not in found]
    if missing:
        raise DataError(f"{path} lacks the {spec.title} member(s) {', '.join(spec.prefix + m for m in missing)}; "
                        f"{_fix(spec)}")
    return found


def _other_variant(member: str, spec: CifarSpec) -> CifarSpec | None:
    for other in (CIFAR10, CIFAR100):
        if other is not spec and member.startswith(other.prefix):
            return other
    return None


def _unpickle(file: io.BufferedReader | None) -> Any:
    if file is None:
        raise tarfile.ReadError("member cannot be extracted")
    with file:
        # numpy arrays only: a user-supplied archive must not be able to run code through pickle
        return safe_pickle.load(file, safe_pickle.NUMPY_ARRAYS, encoding="bytes")


def _batch_arrays(batch: Any, member: str, path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of one batch, checked."""
    where = f"{path} member {spec.prefix}{member}"
    if not isinstance(batch, dict) or b"data" not in batch or spec.labels_key not in batch:
        raise DataError(f"{where} is not a {spec.title} batch (needs b'data' and "
                        f"{spec.labels_key!r}); {_fix(spec)}")
    data = np.asarray(batch[b"data"])
    try:
        labels = np.asarray(batch[spec.labels_key], dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.empty(0)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW or labels.shape != (len(data),):
        raise DataError(f"{where} has data {data.dtype} {data.shape} and {labels.shape} labels, expected "
                        f"uint8 (N, {_ROW}) with N labels; the file is corrupt, {_fix(spec)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{where} has labels outside 0..{spec.num_classes - 1}; {_fix(spec)}")
    images = np.ascontiguousarray(data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))
    return images, labels


def _class_names(meta: Any, path: Path, spec: CifarSpec) -> list[str]:
    names = meta.get(spec.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != spec.num_classes:
        raise DataError(f"{path} member {spec.prefix}{spec.meta_member} lacks {spec.num_classes} "
                        f"{spec.names_key!r}; {_fix(spec)}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
