"""Export a trained run as a Paddle inference model: the logic behind ``export.py``.

The model is rebuilt from the run (:mod:`ppadapt.runs.loading`) (or, with ``--backbone`` and
``--adapter NAME=PATH``, each task's own model is built from the shared backbone and its
adapter: :func:`export_tasks`, one folder per task), mergeable
methods (LoRA, SSF) are folded into the backbone weights so the exported graph
is a plain ViT, and ``paddle.jit.save`` writes the program and weights with a
dynamic batch: input ``image`` of shape ``[N, 3, H, W]`` float32, output the
logits ``[N, classes]``. AdaptFormer, VPT and Houlsby adapters stay in the graph
(they are part of the forward). The model is in eval mode: dropout is off.

Paddle 3 writes a PIR program (``inference.json``) and ``inference.pdiparams``;
older Paddle wrote ``inference.pdmodel``. Whatever this Paddle produced is
reported. Next to them, ``inference.yml`` tells a deployer how to preprocess
(RGB, resize, mean/std) and the class names. After saving, the files are
loaded with ``paddle.inference`` and checked against the dygraph model (before
merging) on batches of 1 and 2.

ONNX (``onnx=True``) needs ``paddle2onnx`` installed; it is run with
``--optimize_tool None`` so that it installs nothing at run time.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import paddle
import paddle.inference as paddle_infer
import yaml
from paddle.static import InputSpec

from ..data.transforms import center_crop_shorter_side
from ..errors import ConfigError, MethodDoesNotFit, PPAdaptError
from ..methods import get_method
from ..runs.loading import describe, load_run
from ..utils.files import ensure_writable
from ..utils.formatting import format_size
from .multitask import (MultiTaskModel, MultiTaskPredictor, add_backbone_arguments, backbone_from_args,
                        check_many_args, describe_many)
from .tool import ArgumentParser, run_tool

PREFIX = "inference"
META_FILE = f"{PREFIX}.yml"
# Files an export writes (and removes first, so no stale one from an older Paddle is left).
OWN_FILES = tuple(f"{PREFIX}{ext}" for ext in (".json", ".pdmodel", ".pdiparams", ".pdiparams.info", ".yml",
                                                 ".onnx"))
DEFAULT_OPSET = 17


class ExportError(PPAdaptError):
    """The export could not be written or does not reproduce the model."""


@dataclass
class ExportResult:
    output: Path
    model_file: Path
    params_file: Path
    meta_file: Path
    files: list[Path]
    method: str
    img_size: int
    merged: list[str] = field(default_factory=list)
    input_name: str = "image"
    output_name: str = ""
    max_abs_diff: float | None = None
    onnx_file: Path | None = None


def checked_output(output: str | Path, onnx: bool) -> Path:
    """The export folder, checked before any model is loaded: an unwritable ``--output`` or a
    missing paddle2onnx fails at once, in one line."""
    if onnx and importlib.util.find_spec("paddle2onnx") is None:
        raise ConfigError("--onnx needs the paddle2onnx package, which is not installed "
                          "(pip install paddle2onnx, or export without --onnx)")
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} exists and is not a folder")
    ensure_writable(out, ExportError)
    return out


def export_model(checkpoint: str | Path, output: str | Path, *, weights: str | None = None,
                 onnx: bool = False, opset: int = DEFAULT_OPSET, verify: bool = True,
                 log: Callable[[str], None] = print) -> ExportResult:
    """Export the run at ``checkpoint`` (run dir, ``.pdparams`` or ``.safetensors``) to ``output``;
    see the module docstring."""
    out = checked_output(output, onnx)

    run = load_run(checkpoint, weights)
    log(describe(run))
    model, size = run.model, run.img_size
    probe = _probe(size)
    with paddle.no_grad():
        reference = model(paddle.to_tensor(probe)).numpy()  # the model as trained, before merging
    merged = _merge(model, run.method, log)
    center_crop = run.config.stage(run.stage).eval_resize == "resize_center_crop"
    info = ExportInfo(img_size=size, class_names=list(run.class_names), mean=run.mean, std=run.std,
                      center_crop=center_crop,
                      source={"run_dir": str(run.run_dir), "weights": str(run.weights), "stage": run.stage,
                              "method": run.method, "merged": list(merged)})
    return _write_export(model, out, info, run.method, merged, probe, reference, verify=verify, onnx=onnx,
                         opset=opset, log=log)


@dataclass
class ExportInfo:
    """What ``inference.yml`` tells a deployer besides the files: input size, classes,
    preprocessing, and where the model came from."""

    img_size: int
    class_names: list[str]
    mean: Sequence[float]
    std: Sequence[float]
    center_crop: bool
    source: dict


def _probe(size: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, size, size)).astype("float32")


def _merge(model: paddle.nn.Layer, method_name: str, log: Callable[[str], None]) -> list[str]:
    """Fold a mergeable method into the backbone weights; the names of those merged. A method
    that cannot fold into this backbone (SSF's shift into a layer without a bias, as Swin's
    patch merging has) stays in the graph, with one line that says so."""
    method = get_method(method_name)
    if method.merge is None:
        return []
    try:
        method.merge(model)
    except MethodDoesNotFit as exc:
        log(f"{method_name} stays unmerged, its layers in the graph: {exc}")
        return []
    log(f"merged {method_name} into the backbone weights (none of its layers is left in the graph)")
    return [method_name]


def _write_export(model: paddle.nn.Layer, out: Path, info: ExportInfo, method: str, merged: list[str],
                  probe: np.ndarray, reference: np.ndarray, *, verify: bool, onnx: bool, opset: int,
                  log: Callable[[str], None]) -> ExportResult:
    """``paddle.jit.save`` of ``model`` in ``out``, checked against ``reference`` (the dygraph
    logits of ``probe``) with paddle.inference, and its ``inference.yml``."""
    size = info.img_size
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    for name in OWN_FILES:
        (out / name).unlink(missing_ok=True)
    # A failure to convert or load is a bug (not a user error): it keeps its traceback.
    with _without_known_noise():
        paddle.jit.save(model, str(out / PREFIX), input_spec=[InputSpec([None, 3, size, size], "float32", "image")])
    model_file = next((out / f"{PREFIX}{ext}" for ext in (".json", ".pdmodel") if (out / f"{PREFIX}{ext}").is_file()),
                      None)
    params_file = out / f"{PREFIX}.pdiparams"
    if model_file is None or not params_file.is_file():
        written = ", ".join(sorted(p.name for p in out.iterdir())) or "nothing"
        raise ExportError(f"paddle.jit.save wrote {written} in {out}, not {PREFIX}.json/.pdmodel + .pdiparams")

    result = ExportResult(output=out, model_file=model_file, params_file=params_file, meta_file=out / META_FILE,
                          files=[], method=method, img_size=size, merged=merged)
    predictor = _inference_predictor(model_file, params_file)
    result.input_name = predictor.get_input_names()[0]
    result.output_name = predictor.get_output_names()[0]
    if verify:
        result.max_abs_diff = _check(predictor, probe, reference)
        log(f"checked with paddle.inference: batches of 1 and 2 give the dygraph model's logits "
            f"(max abs diff {result.max_abs_diff:.1e})")
    _write_meta(result, info)
    if onnx:
        result.onnx_file = _to_onnx(result, opset)
    result.files = sorted(p for p in out.iterdir() if p.name in OWN_FILES)
    return result


def export_tasks(model: MultiTaskModel, output: str | Path, *, names: Sequence[str] | None = None,
                 onnx: bool = False, opset: int = DEFAULT_OPSET, verify: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, ExportResult]:
    """One Paddle inference model per task of ``model`` (default: all), in ``output/<task>/``.

    Each is the task's own full model (:meth:`MultiTaskModel.standalone`: the backbone's
    tensors copied, a mergeable method folded in) and is checked against the logits the
    shared backbone gives for that task, so what is deployed is what was served.
    """
    out = checked_output(output, onnx)
    names = list(names) if names else list(model.tasks)
    for name in names:
        model.task(name)
    results = {}
    size = model.backbone.img_size
    probe = _probe(size)
    for name in names:
        task = model.task(name)
        log(f"task {name}: {task.method} adapter {task.file.path}")
        reference = model.logits(probe, name).numpy()  # the task as the shared backbone serves it
        standalone = model.standalone(name)
        merged = _merge(standalone, task.method, log)
        info = ExportInfo(img_size=size, class_names=list(task.class_names), mean=task.mean, std=task.std,
                          center_crop=task.transform.center_crop,
                          source={"backbone": model.backbone.source, "adapter": str(task.file.path), "task": name,
                                  "method": task.method, "merged": list(merged)})
        results[name] = _write_export(standalone, out / name, info, task.method, merged, probe, reference,
                                      verify=verify, onnx=onnx, opset=opset, log=log)
        del standalone  # one task's full model at a time
    return results


# Printed by Paddle 3.3's C++ logging on every jit.save of a ViT; it concerns nothing we do.
_NOISE = ("not support input out tensor",)


@contextlib.contextmanager
def _without_known_noise():
    """Hide :data:`_NOISE` lines that Paddle's C++ code writes straight to file descriptor 2;
    every other line is written back to stderr afterwards."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (e.g. some notebook kernels): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            rest = [line for line in text.splitlines() if not any(n in line for n in _NOISE)]
            if rest:
                print("\n".join(rest), file=sys.stderr)


def _inference_predictor(model_file: Path, params_file: Path):
    config = paddle_infer.Config(str(model_file), str(params_file))
    config.disable_glog_info()
    return paddle_infer.create_predictor(config)


def run_inference(predictor, batch: np.ndarray) -> np.ndarray:
    """One forward pass of a ``paddle.inference`` predictor on an N x 3 x H x W float32 batch."""
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(np.ascontiguousarray(batch, dtype="float32"))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def _check(predictor, probe: np.ndarray, reference: np.ndarray) -> float:
    diffs = []
    for n in (1, len(probe)):
        got = run_inference(predictor, probe[:n])
        if got.shape != reference[:n].shape:
            raise ExportError(f"the exported model gives shape {list(got.shape)} for a batch of {n}, "
                              f"expected {list(reference[:n].shape)}")
        diffs.append(float(np.abs(got - reference[:n]).max()))
    worst = max(diffs)
    tolerance = 1e-4 * max(1.0, float(np.abs(reference).max()))
    if not worst <= tolerance:
        raise ExportError(f"the exported model's logits differ from the dygraph model's by {worst:.2e} "
                          f"(tolerance {tolerance:.1e}): please report this with the run's config")
    return worst


def _write_meta(result: ExportResult, info: ExportInfo) -> None:
    from .. import __version__  # ppadapt/__init__.py imports the apps: read it when the package is complete

    size = info.img_size
    meta = {
        "model": {
            "model_file": result.model_file.name,
            "params_file": result.params_file.name,
            "input": {"name": result.input_name, "shape": [-1, 3, size, size], "dtype": "float32",
                      "layout": "NCHW"},
            "output": {"name": result.output_name, "shape": [-1, len(info.class_names)],
                       "meaning": "logits: softmax gives the class probabilities"},
        },
        "preprocess": {
            "color": "RGB",
            "resize": [size, size],
            "interpolation": "area to shrink, bilinear to enlarge (OpenCV)",
            "normalize": "(pixel / 255 - mean) / std per channel, then HWC to CHW",
            "mean": [float(v) for v in info.mean],
            "std": [float(v) for v in info.std],
        },
        "class_names": list(info.class_names),
        "source": {**info.source, "ppadapt": __version__, "paddle": paddle.__version__},
    }
    if info.center_crop:  # evaluated as ImageNet recipes do
        rest = {k: v for k, v in meta["preprocess"].items() if k not in ("color", "resize")}
        meta["preprocess"] = {"color": "RGB", "resize_shorter_side": center_crop_shorter_side(size),
                              "center_crop": [size, size], **rest}
    header = ("# How to feed the exported model (ppadapt export.py). Load it with\n"
              f"# paddle.inference.Config('{result.model_file.name}', '{result.params_file.name}').\n")
    result.meta_file.write_text(header + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100),
                                encoding="utf-8")


def _to_onnx(result: ExportResult, opset: int) -> Path:
    target = result.output / f"{PREFIX}.onnx"
    command = [sys.executable, "-m", "paddle2onnx.command", "--model_dir", str(result.output),
               "--model_filename", result.model_file.name, "--params_filename", result.params_file.name,
               "--save_file", str(target), "--opset_version", str(opset), "--enable_onnx_checker", "True",
               "--optimize_tool", "None"]  # its default optimiser installs packages at run time
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0 or not target.is_file():
        last = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-1:] or ["no output"]
        raise ExportError(f"paddle2onnx failed (exit {proc.returncode}): {last[0][:200]}; the Paddle inference "
                          f"files in {result.output} are complete")
    return target


ROLES = {".json": "program (PIR)", ".pdmodel": "program", ".pdiparams": "weights",
         ".info": "weights info", ".yml": "class names and preprocessing", ".onnx": "ONNX model"}


def export_main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="export.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a trained run as a Paddle inference model (dynamic batch), with LoRA/SSF merged;\n"
                    "or one model per task (adapter file) on a shared backbone.\n\n"
                    "  python ppadapt/export.py --checkpoint output/cpu_transfer_cifar10_lora --output deploy/lora\n"
                    "  python ppadapt/export.py --backbone output/digits_pretrain_digits \\\n"
                    "      --adapter lora=output/RUN_A --adapter ssf=output/RUN_B --output deploy  # deploy/{lora,ssf}")
    p.add_argument("--checkpoint", metavar="DIR_OR_FILE",
                   help="run directory (output/<run>/) or a .pdparams / .safetensors next to its run.json")
    p.add_argument("--output", required=True, metavar="DIR",
                   help=f"folder for {PREFIX}.json/.pdiparams and {META_FILE} (created; earlier export files "
                        "there are replaced); with --backbone, one subfolder per task")
    p.add_argument("--weights", choices=("best", "final"),
                   help="with a run directory: best.pdparams (default; final if the run has no best) "
                        "or final.pdparams (.safetensors with save_format: safetensors); with --backbone a run directory: its "
                        "final (default) or best")
    p.add_argument("--onnx", action="store_true",
                   help=f"also write {PREFIX}.onnx with paddle2onnx (must be installed)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-check", action="store_true",
                   help="skip loading the export with paddle.inference and comparing it with the model")
    add_backbone_arguments(p)
    args = p.parse_args(argv)

    def show(result: ExportResult) -> None:
        print(f"exported to {result.output} (input '{result.input_name}' [N, 3, "
              f"{result.img_size}, {result.img_size}] float32, output '{result.output_name}' logits):")
        for path in result.files:
            size = format_size(path.stat().st_size, ("KiB", "MiB"))
            print(f"  {path}  {size}, {ROLES.get(path.suffix, '')}")

    def main() -> int:
        if args.backbone is not None or args.adapter:
            if args.checkpoint is not None:
                raise ConfigError("pass --checkpoint (one run) or --backbone with --adapter NAME=PATH (a model per "
                                  "task), not both")
            pairs = check_many_args(args)
            predictor = MultiTaskPredictor(backbone_from_args(args), pairs)
            print(describe_many(predictor), file=sys.stderr)
            results = export_tasks(predictor.model, args.output, onnx=args.onnx, opset=args.opset,
                                   verify=not args.no_check, log=lambda line: print(line, file=sys.stderr))
            for result in results.values():
                show(result)
            return 0
        if args.checkpoint is None:
            raise ConfigError("--checkpoint is required (or --backbone with --adapter NAME=PATH: a model per task)")
        show(export_model(args.checkpoint, args.output, weights=args.weights, onnx=args.onnx,
                          opset=args.opset, verify=not args.no_check))
        return 0
    return run_tool(main)
