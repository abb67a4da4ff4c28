"""Datasets for ppadapt: CIFAR-10/100 archives, an image folder, and scikit-learn's digits.

``build_datasets`` is the one entry point the training engine uses; it returns a
:class:`DatasetBundle` whose items are ``(float32 [3, H, W] normalised image,
int64 [1] label)``.
"""
from .arrays import ArrayDataset
from .bundle import DATASETS, DatasetBundle, build_datasets
from .transforms import EvalTransform, TrainTransform

__all__ = ["DATASETS", "ArrayDataset", "DatasetBundle", "EvalTransform", "TrainTransform", "build_datasets"]
