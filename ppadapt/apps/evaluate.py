"""Score tasks on their test sets through one shared backbone: the logic behind ``evaluate.py``.

Each task's test set is the one its transfer run evaluated on: the dataset, data file or
folder, class selection and evaluation resize recorded in the ``run.json`` beside its
adapter, normalised with the task's own mean/std, read with :mod:`ppadapt.data`'s loaders.
Its top-1 accuracy through the shared backbone is then the run's own final figure, which
is printed beside it: a check that serving tasks side by side changes nothing. With
``mixed=True`` the test images of all tasks are interleaved and run in mixed batches.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data import build_datasets
from ..data.resolution import stage_bit_sizes
from ..data.transforms import Pipeline
from ..errors import CheckpointError, ConfigError, DataError
from ..runs.loading import config_from_record
from .image_inputs import DEFAULT_BATCH
from .multitask import (MultiTaskModel, MultiTaskPredictor, add_backbone_arguments, backbone_from_args,
                        check_many_args, describe_many)
from .tool import ArgumentParser, run_tool


@dataclass
class TaskScore:
    """One task's test accuracy through the shared backbone, and what its run recorded."""

    task: str
    method: str
    dataset: str
    images: int
    acc_top1: float
    acc_top5: float | None  # None with fewer than 6 classes
    recorded_top1: float | None  # run.json's final top-1 (None: the run did not finish)
    run_dir: str

    @property
    def matches(self) -> bool | None:
        return None if self.recorded_top1 is None else abs(self.acc_top1 - self.recorded_top1) <= 1e-6


def task_test_set(model: MultiTaskModel, name: str, data_file: str | None = None
                  ) -> tuple[str, np.ndarray, np.ndarray]:
    """Task ``name``'s test set as its run evaluated it: ``(dataset name, images, labels)``
    (images preprocessed, N x 3 x H x W float32)."""
    task = model.task(name)
    record = task.file.record
    if record is None or record.config is None:
        raise CheckpointError(f"task '{name}': no run.json beside its adapter {task.file.path}, so its test set is "
                              "unknown (keep the adapter in its transfer run folder)")
    cfg = config_from_record(record.config)
    stage = record.stage or "transfer"
    st = cfg.stage(stage)
    bit = stage_bit_sizes(cfg, stage)
    mean, std = task.mean, task.std
    data = build_datasets(st.dataset, role=stage, img_size=model.backbone.img_size,
                          data_file=data_file or st.data_file, data_dir=st.data_dir, classes=st.classes,
                          augment=False, normalization=(mean, std),
                          pipeline=Pipeline("none", st.eval_resize, bit.resize if bit else None), seed=cfg.seed)
    if list(data.class_names) != list(task.class_names):
        raise DataError(f"task '{name}': the test set's classes ({', '.join(data.class_names[:5])}, ...) are not the "
                        f"task's ({', '.join(task.class_names[:5])}, ...): is --data-file the run's data?")
    test = data.test
    images = np.stack([test[i][0] for i in range(len(test))]).astype("float32")
    labels = np.asarray([int(np.asarray(test[i][1]).reshape(-1)[0]) for i in range(len(test))])
    return st.dataset, images, labels


def evaluate_tasks(model: MultiTaskModel, names: Sequence[str] | None = None, *, batch_size: int = DEFAULT_BATCH,
                   mixed: bool = False, data_files: dict[str, str] | None = None,
                   log: Callable[[str], None] = lambda line: None) -> list[TaskScore]:
    """The test accuracy of each task in ``names`` (default: all), through the shared backbone.

    ``mixed``: the tasks' test images are interleaved (one of each task in turn) and run in
    mixed batches of ``batch_size``, as a server with many tasks would see them.
    """
    names = list(names) if names else list(model.tasks)
    for name in names:
        model.task(name)
    data_files = data_files or {}
    for name in data_files:
        if name not in names:
            raise ConfigError(f"--data-file {name}=...: no task '{name}' is evaluated (tasks: {', '.join(names)})")
    sets = {}
    for name in names:
        sets[name] = task_test_set(model, name, data_files.get(name))
        log(f"task {name}: {sets[name][0]}, {len(sets[name][2])} test images")
    logits: dict[str, list] = {name: [None] * len(sets[name][2]) for name in names}
    order = _interleaved(names, {n: len(s[2]) for n, s in sets.items()}) if mixed else \
        [(name, i) for name in names for i in range(len(sets[name][2]))]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = np.stack([sets[name][1][i] for name, i in chunk])
        rows = model.logits_per_image(batch, [name for name, _ in chunk])
        for (name, i), row in zip(chunk, rows):
            logits[name][i] = row
    scores = []
    for name in names:
        dataset, _, labels = sets[name]
        out = np.stack(logits[name])
        ranked = np.argsort(-out, axis=1, kind="stable")
        top1 = float(np.mean(ranked[:, 0] == labels))
        top5 = float(np.mean((ranked[:, :5] == labels[:, None]).any(axis=1))) if out.shape[1] > 5 else None
        task = model.task(name)
        final = task.file.record.final if task.file.record is not None else None
        recorded = float(final["acc_top1"]) if final and "acc_top1" in final else None
        scores.append(TaskScore(name, task.method, dataset, len(labels), top1, top5, recorded,
                                str(task.file.run_dir)))
    return scores


def _interleaved(names: Sequence[str], counts: dict[str, int]) -> list[tuple[str, int]]:
    out, longest = [], max(counts.values())
    for i in range(longest):
        out += [(name, i) for name in names if i < counts[name]]
    return out


def format_scores(scores: Sequence[TaskScore]) -> str:
    """A plain table: one line per task, its top-1 beside the run's own final top-1."""
    header = ("task", "method", "dataset", "images", "top-1", "top-5", "run.json final top-1", "")
    rows = [header]
    for s in scores:
        rows.append((s.task, s.method, s.dataset, str(s.images), f"{100 * s.acc_top1:.2f}%",
                     "-" if s.acc_top5 is None else f"{100 * s.acc_top5:.2f}%",
                     "-" if s.recorded_top1 is None else f"{100 * s.recorded_top1:.2f}%",
                     {True: "equal", False: "DIFFERENT", None: ""}[s.matches]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="evaluate.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score tasks (adapter files) on their test sets through one shared backbone, beside\n"
                    "each run's own final top-1.\n\n"
                    "  python ppadapt/evaluate.py --backbone output/digits_pretrain_digits \\\n"
                    "      --adapter lora=output/digits_transfer_digits_lora \\\n"
                    "      --adapter ssf=output/digits_transfer_digits_ssf --mixed")
    add_backbone_arguments(p, weights=True)
    p.add_argument("--task", action="append", default=[], metavar="NAME",
                   help="evaluate only this task (repeat for more; default: every --adapter)")
    p.add_argument("--data-file", action="append", default=[], metavar="NAME=PATH",
                   help="task NAME's data file, when its run.json's path no longer holds it")
    p.add_argument("--mixed", action="store_true",
                   help="interleave the tasks' test images and run them in mixed batches")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help=f"images per forward pass (default {DEFAULT_BATCH})")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = p.parse_args(argv)

    def main() -> int:
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
        pairs = check_many_args(args)
        names = [n for n, _ in pairs]
        for task in args.task:
            if task not in names:
                raise ConfigError(f"--task {task}: unknown task (tasks: {', '.join(names)})")
        data_files = {}
        for item in args.data_file:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ConfigError(f"--data-file {item!r}: expected NAME=PATH")
            if name not in names:
                raise ConfigError(f"--data-file {name}=...: unknown task (tasks: {', '.join(names)})")
            if not Path(path).expanduser().is_file():
                raise DataError(f"data file not found: {path}")
            data_files[name] = path
        predictor = MultiTaskPredictor(backbone_from_args(args), pairs)
        print(describe_many(predictor), file=sys.stderr)
        scores = evaluate_tasks(predictor.model, args.task or names, batch_size=args.batch_size, mixed=args.mixed,
                                data_files=data_files, log=lambda line: print(line, file=sys.stderr))
        if args.json:
            print(json.dumps([{**asdict(s), "matches": s.matches} for s in scores], indent=2))
        else:
            print(format_scores(scores))
        return 0
    return run_tool(main)


__all__ = ["TaskScore", "evaluate_main", "evaluate_tasks", "format_scores", "task_test_set"]
