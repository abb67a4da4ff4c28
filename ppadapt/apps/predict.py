"""Classify images with a trained run: the :class:`Predictor` API and ``predict.py``.

The model is rebuilt from the run's ``run.json`` (see :mod:`ppadapt.runs.loading`)
and every image goes through the run's own evaluation preprocessing: converted
to RGB (grey, alpha and palette images included), resized to the model's input
size as the data loaders resize (:func:`ppadapt.data.arrays.resize_image`; or the
shorter side resized and the centre cropped, for a run with ``eval_resize:
resize_center_crop``), then
normalised with the run's mean/std (:class:`ppadapt.data.transforms.EvalTransform`).
Scores are softmax probabilities, top-k first, with the run's class names::

    {'labels': ['dog', 'horse', ...], 'scores': [0.87, 0.06, ...]}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from ..data.images import IMAGE_SUFFIX_TEXT, decode_image, first_paths
from ..data.transforms import EvalTransform
from ..errors import ConfigError, DataError
from ..runs.loading import describe, load_run
from .image_inputs import DEFAULT_BATCH, DEFAULT_TOPK, expand_images, read_image, to_rgb, top_k
from .multitask import add_backbone_arguments, describe_many, prepare_many
from .tool import ArgumentParser, run_tool

class Predictor:
    """Top-k classification with the model of a training run.

    ``checkpoint``: a run directory (``output/<run>/``; ``weights`` picks
    ``"best"`` (default, or final when the run has no best) or ``"final"``) or a
    ``.pdparams`` / ``.safetensors`` file next to its ``run.json``.

    Calling it with one image (a path, a PIL image, or an H x W x C uint8 RGB
    numpy array; H x W grey and 4-channel arrays are converted) returns one dict
    ``{"labels": [...], "scores": [...]}``; with a list of them (or an
    N x H x W x C array), a list of dicts in the same order. An unreadable file
    raises :class:`ppadapt.errors.DataError`.
    """

    def __init__(self, checkpoint: str | os.PathLike, topk: int = DEFAULT_TOPK, *,
                 weights: str | None = None, batch_size: int = DEFAULT_BATCH) -> None:
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be a positive integer, got {topk!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
        self.run = load_run(checkpoint, weights)
        self.model = self.run.model
        self.class_names = list(self.run.class_names)
        self.img_size = self.run.img_size
        self.mean, self.std = self.run.mean, self.run.std
        self.topk = min(topk, len(self.class_names))
        self.batch_size = batch_size
        center_crop = self.run.config.stage(self.run.stage).eval_resize == "resize_center_crop"
        self._transform = EvalTransform(self.mean, self.std, self.img_size, center_crop=center_crop)  # as in evaluation

    # -- inputs ------------------------------------------------------------------
    read_image = staticmethod(read_image)
    to_rgb = staticmethod(to_rgb)

    def preprocess(self, image: Any) -> np.ndarray:
        """One image (any accepted form) as the model's float32 3 x H x W input."""
        return self._transform(self.to_rgb(image))

    # -- outputs -----------------------------------------------------------------
    def probabilities(self, images: Sequence[Any]) -> np.ndarray:
        """Softmax probabilities, N x classes (float32), of a list of images, in batches."""
        out = np.empty((len(images), len(self.class_names)), dtype=np.float32)
        with paddle.no_grad():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                batch = np.stack([self.preprocess(im) for im in chunk])
                logits = self.model(paddle.to_tensor(batch))
                out[start:start + len(chunk)] = F.softmax(logits, axis=-1).numpy()
        return out

    def top(self, probabilities: np.ndarray) -> list[dict]:
        """``{"labels", "scores"}`` of each row: the ``topk`` classes, most probable first."""
        return top_k(probabilities, self.class_names, self.topk)

    def predict(self, images: Sequence[Any]) -> list[dict]:
        """Top-k of each image of a list (paths, PIL images, arrays), in order."""
        images = list(images)
        return self.top(self.probabilities(images)) if images else []

    def __call__(self, images: Any) -> dict | list[dict]:
        if isinstance(images, (list, tuple)):
            return self.predict(images)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return self.predict(list(images))
        return self.predict([images])[0]

    def __repr__(self) -> str:
        return (f"Predictor({str(self.run.weights)!r}, topk={self.topk}, method={self.run.method!r}, "
                f"classes={len(self.class_names)}, img_size={self.img_size})")


# --- command line ------------------------------------------------------------------------

def format_result(image: str, result: dict) -> str:
    """Human-readable lines for one image: its path, then ``rank. label  probability``."""
    width = max(len(label) for label in result["labels"])
    lines = [image]
    for rank, (label, score) in enumerate(zip(result["labels"], result["scores"]), start=1):
        lines.append(f"  {rank}. {label:<{width}}  {score:.4f}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="predict.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Classify images with a trained run (top-k labels with softmax probabilities), or with\n"
                    "many tasks (adapter files) on one backbone.\n\n"
                    "  python ppadapt/predict.py --checkpoint output/cpu_transfer_cifar10_frozen cat.png dog.jpg\n"
                    "  python ppadapt/predict.py --checkpoint output/RUN/final.pdparams 'photos/*.jpg' --json\n"
                    "  python ppadapt/predict.py --backbone output/digits_pretrain_digits \\\n"
                    "      --adapter lora=output/RUN_A/adapter --adapter ssf=output/RUN_B --task lora a.png\n"
                    "  python ppadapt/predict.py --backbone ... --adapter ... --task-file images.csv  # IMAGE,TASK lines")
    p.add_argument("--checkpoint", metavar="DIR_OR_FILE",
                   help="run directory (output/<run>/) or a .pdparams / .safetensors next to its run.json")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files, folders (searched recursively) or glob patterns (quote them)")
    p.add_argument("--weights", choices=("best", "final"),
                   help="with a run directory: best.pdparams (default; final if the run has no best) "
                        "or final.pdparams (.safetensors with save_format: safetensors); with --backbone a run directory: its "
                        "final (default) or best")
    p.add_argument("--topk", type=int, default=DEFAULT_TOPK,
                   help=f"labels per image (default {DEFAULT_TOPK}, at most the class count)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help=f"images per forward pass (default {DEFAULT_BATCH})")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document: a list of {image, labels, scores} ({image, task, labels, "
                        "scores} with --backbone)")
    add_backbone_arguments(p)
    p.add_argument("--task", metavar="NAME", help="with --backbone: the task of every image")
    p.add_argument("--task-file", metavar="FILE",
                   help="with --backbone: a task per image, one IMAGE,TASK line each (a mixed batch); "
                        "image paths relative to the current folder")
    return p


def _many_tasks(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.backbone, args.task, args.task_file, args.backbone_file, args.img_size,
                                       args.patch_size)) or bool(args.adapter)


def predict_main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def main() -> int:
        if args.topk < 1:
            raise ConfigError(f"--topk must be at least 1, got {args.topk}")
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
        many = _many_tasks(args)
        if many:
            if args.checkpoint is not None:
                raise ConfigError("pass --checkpoint (one run) or --backbone with --adapter NAME=PATH (many tasks "
                                  "on one backbone), not both")
            files, tasks, predictor = prepare_many(args)
            header = describe_many(predictor)
            classify = lambda images, names: predictor.predict(images, tasks=names)  # noqa: E731
        else:
            if args.checkpoint is None:
                raise ConfigError("--checkpoint is required (or --backbone with --adapter NAME=PATH for many tasks "
                                  "on one backbone)")
            if not args.images:
                raise ConfigError("no images given: pass image files, folders or patterns")
            files = expand_images(args.images)  # before loading the model: a typo fails fast
            tasks = [None] * len(files)
            single = Predictor(args.checkpoint, args.topk, weights=args.weights, batch_size=args.batch_size)
            header = describe(single.run)
            classify = lambda images, names: single.predict(images)  # noqa: E731
        results, skipped, announced = [], [], False
        for start in range(0, len(files), args.batch_size):
            decoded = [(path, task, decode_image(path)) for path, task in
                       zip(files[start:start + args.batch_size], tasks[start:start + args.batch_size])]
            skipped += [path for path, _, image in decoded if image is None]
            good = [(path, task, image) for path, task, image in decoded if image is not None]
            if not good:
                continue
            if not announced:  # with the first readable image: with none, the error line stands alone
                print(header, file=sys.stderr)
                announced = True
            outputs = classify([image for _, _, image in good], [task for _, task, _ in good])
            for (path, task, _), result in zip(good, outputs):
                if args.json:
                    results.append({"image": str(path), **({"task": task} if many else {}), **result})
                else:
                    print(format_result(f"{path}  [task {task}]" if many else str(path), result), flush=True)
        if skipped and len(skipped) < len(files):
            print(f"warning: skipped {len(skipped)} unreadable image file(s) of {len(files)}: {first_paths(skipped)}",
                  file=sys.stderr)
        if len(skipped) == len(files):  # the error alone says it
            raise DataError(f"none of the {len(files)} image file(s) could be read as an image "
                            f"({first_paths(skipped)}); "
                            f"pass image files ({IMAGE_SUFFIX_TEXT}) that open in an image viewer")
        if args.json:
            json.dump(results, sys.stdout, indent=2)
            sys.stdout.write("\n")
        return 0
    try:
        return run_tool(main)
    except BrokenPipeError:  # e.g. `predict.py ... | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
