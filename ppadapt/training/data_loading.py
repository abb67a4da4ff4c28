"""A stage's datasets and loaders: seeded data order and augmentation, one share of every
epoch's batches per process."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import paddle

from ..config import Config
from ..data import DatasetBundle, build_datasets
from ..data.resolution import stage_bit_sizes
from ..data.sampler import EpochBatchSampler, SeededDataset
from ..data.transforms import Pipeline
from .mixing import make_mixer
from .plan import StagePlan


@dataclass
class StageData:
    bundle: DatasetBundle
    sampler: EpochBatchSampler
    train_loader: paddle.io.DataLoader
    test_loader: paddle.io.DataLoader
    val_loader: paddle.io.DataLoader | None = None  # val_split / val_dir: chooses the best epoch

    @property
    def num_classes(self) -> int:
        return self.bundle.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.bundle.class_names

    @property
    def mean(self):
        return self.bundle.mean

    @property
    def std(self):
        return self.bundle.std


def stage_pipeline(cfg: Config, stage: str) -> Pipeline:
    """The stage's augmentation and evaluation resize; with ``resolution: bit``, the size
    ``crop_flip`` crops from (:mod:`ppadapt.data.resolution`)."""
    st = cfg.stage(stage)
    bit = stage_bit_sizes(cfg, stage)
    return Pipeline(st.augmentation, st.eval_resize, bit.resize if bit else None)


def load_datasets(plan: StagePlan, log: Callable[[str], None]) -> DatasetBundle:
    """The stage's train and test sets, normalised as the plan says."""
    st, norm = plan.cfg.stage(plan.stage), plan.normalization
    data = build_datasets(st.dataset, role=plan.stage, img_size=plan.cfg.model.img_size,
                          data_file=st.data_file, data_dir=st.data_dir, classes=st.classes,
                          augment=st.augment, normalization=norm[:2] if norm else None,
                          pipeline=stage_pipeline(plan.cfg, plan.stage),
                          val_split=st.val_split, val_dir=st.val_dir, seed=plan.cfg.seed)
    val = "" if data.val is None else (f" / {len(data.val)} val ("
                                       + (f"val_split {st.val_split:g}" if st.val_split else st.val_dir) + ")")
    log(f"{plan.stage}: {st.dataset}, {len(data.train)} train{val} / {len(data.test)} test images, "
        f"{data.num_classes} classes")
    if norm and not plan.resumed:
        log(f"normalisation: mean {tuple(data.mean)}, std {tuple(data.std)} ({norm[2]})")
    return data


def make_loaders(plan: StagePlan, data: DatasetBundle, rank: int, nranks: int) -> StageData:
    """Data order and augmentation depend only on (seed, epoch, sample), MixUp/CutMix only on
    (seed, epoch, batch, rank): see :mod:`ppadapt.data.sampler` and :mod:`ppadapt.data.mixing`."""
    st, seed = plan.cfg.stage(plan.stage), plan.cfg.seed
    train_set = SeededDataset(data.train, seed)
    mixer = make_mixer(st, data.num_classes, seed, rank)
    sampler = EpochBatchSampler(len(train_set), st.batch_size, seed, num_replicas=nranks, rank=rank,
                                batch_keys=mixer is not None)
    train_loader = paddle.io.DataLoader(train_set, batch_sampler=sampler, num_workers=st.num_workers,
                                        collate_fn=mixer)
    if nranks > 1:  # each rank evaluates its share; paddle.Model gathers the predictions for the metrics
        test_loader = paddle.io.DataLoader(
            data.test, batch_sampler=paddle.io.DistributedBatchSampler(data.test, batch_size=st.batch_size),
            num_workers=st.num_workers)
    else:
        test_loader = paddle.io.DataLoader(data.test, batch_size=st.batch_size, shuffle=False,
                                           num_workers=st.num_workers)
    val_loader = None
    if data.val is not None:  # every rank evaluates all of it: the same choice of best on every rank
        val_loader = paddle.io.DataLoader(data.val, batch_size=st.batch_size, shuffle=False,
                                          num_workers=st.num_workers)
    return StageData(data, sampler, train_loader, test_loader, val_loader)
