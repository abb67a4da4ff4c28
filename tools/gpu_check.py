"""A GPU check, ready to run on a machine with a GPU and Paddle's GPU wheel (issue 14).

    tools/gpu_check.sh                      # the tutorial preset: ViT-B/3, batch 128, 20 timed steps
    tools/gpu_check.sh --steps 50 --json gpu_check.json
    tools/gpu_check.sh --cpu-smoke          # the same logic on the CPU at a tiny size (what CI runs)

What it does, on the tutorial preset's transfer stage (``configs/tutorial.yaml``; full
fine-tuning and the frozen AdaptFormer transfer, ``--freeze``):

1. the machine: Paddle, its build, the GPU and its compute capability;
2. Paddle's LayerNorm frozen-scale gradient (README, "A Paddle bug this works around") on
   this device: whether the raw kernel still has the bug (ppadapt works around it either way);
3. the native and fast layer paths give the same outputs and gradients (one batch, every
   trainable parameter, LayerNorm scales away from 1), for full, AdaptFormer and LoRA;
4. ``--steps`` training steps (after ``--warmup``), same seed and same batches, in float32 and
   in each mixed precision this GPU supports (O1 and O2, float16 and bfloat16), plus float32
   with the other layer path and float32 with ``recompute: true``: median step time and peak
   memory (Paddle's allocator) of each;
5. the losses agree: float32 with the other layer path and with recomputation within
   ``--fp32-tol`` (default 1e-3) of float32 at every step, each mixed precision within
   ``--amp-tol`` (default 0.05, relative) at every step.

Exit status 0 when every check passed, 1 when one failed, 2 on a usage error (no GPU
without ``--cpu-smoke``). Step times are printed, never asserted.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ppadapt  # noqa: E402  (first: its thread settings only work before Paddle is imported)
import numpy as np  # noqa: E402
import paddle  # noqa: E402
from paddle.static import InputSpec  # noqa: E402

from ppadapt.apps.bench.probes import MemoryProbe, sync  # noqa: E402
from ppadapt.config import CONFIG_DIR, load_config, parse_scalar, set_value, validate  # noqa: E402
from ppadapt.config.schema import Config  # noqa: E402
from ppadapt.errors import ConfigError  # noqa: E402
from ppadapt.methods.build import apply_transfer_method, build_model  # noqa: E402
from ppadapt.methods.groups import parameter_groups  # noqa: E402
from ppadapt.models.fast_layers import layer_path, use_layers  # noqa: E402
from ppadapt.training.engine import configure_training, seed_everything  # noqa: E402
from ppadapt.training.loss import make_loss  # noqa: E402
from ppadapt.training.optim import make_optimizer  # noqa: E402
from ppadapt.training.precision import amp_spec, float32_parameters, make_network  # noqa: E402
from ppadapt.utils.device import check_amp, use_device  # noqa: E402

SMOKE = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8", "model.drop_border=false",
         "model.carry.adaptformer.bottleneck=8"]
METHODS = {"full": "full fine-tuning", "adaptformer": "AdaptFormer, backbone frozen (--freeze)"}


@dataclass
class Run:
    """One training run of the check: its settings, and what it measured (or why it was skipped)."""

    method: str
    name: str  # "fp32", "fp32 native", "fp32 +recompute", "O1 float16", ...
    overrides: list[str]
    losses: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    skipped: str = ""  # why this machine cannot run it (not a failure)
    error: str = ""  # what went wrong when it ran (a failure; the other runs go on)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(CONFIG_DIR / "tutorial.yaml"), help="preset (default: the tutorial's)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per run (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (their losses are compared too)")
    p.add_argument("--batch-size", type=int, help="default: the preset's transfer.batch_size")
    p.add_argument("--methods", default="full,adaptformer", help="default: full,adaptformer")
    p.add_argument("--amp-levels", default="O1,O2")
    p.add_argument("--amp-dtypes", default="float16,bfloat16", help="those this GPU lacks are skipped, with why")
    p.add_argument("--amp-tol", type=float, default=0.05, help="relative loss difference allowed, AMP vs float32")
    p.add_argument("--fp32-tol", type=float, default=1e-3,
                   help="relative loss difference allowed, float32 runs among themselves (other layer path, "
                        "recompute)")
    p.add_argument("--grad-tol", type=float, default=1e-3,
                   help="native vs fast layers: max |difference| / max |gradient| per parameter")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run the logic on the CPU at a tiny size (ViT dim 32, depth 2, batch 8, 2 steps)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE", help="config keys")
    p.add_argument("--json", metavar="FILE", help="also write everything measured as JSON")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
        args.batch_size = args.batch_size or 8
    return args


def base_config(args: argparse.Namespace) -> Config:
    overrides = ([*SMOKE, "device=cpu"] if args.cpu_smoke else ["device=gpu"]) + list(args.override)
    cfg = load_config(args.config, overrides, stage="transfer")
    if args.batch_size:
        cfg.transfer.batch_size = args.batch_size
    return cfg


# --- 1, 2: the machine and Paddle's LayerNorm --------------------------------------------

def machine(device: str) -> dict:
    info = {"ppadapt": ppadapt.__version__, "paddle": paddle.__version__, "cuda_build": paddle.is_compiled_with_cuda(),
            "device": device}
    if device == "gpu":
        info["gpu"] = paddle.device.cuda.get_device_name()
        info["capability"] = ".".join(map(str, paddle.device.cuda.get_device_capability()))
        info["cuda"] = paddle.version.cuda()
    return info


def layer_norm_bug() -> bool:
    """True if Paddle's own layer_norm returns a wrong input gradient under a frozen scale here."""
    paddle.seed(0)
    weight = paddle.rand([6]) + 0.5
    x0 = paddle.randn([2, 6])
    grads = []
    for frozen in (False, True):
        w = weight.clone()
        w.stop_gradient = frozen
        x = x0.clone()
        x.stop_gradient = False
        (paddle.nn.functional.layer_norm(x, [6], w, None) * paddle.arange(6, dtype="float32")).sum().backward()
        grads.append(x.grad.numpy())
    return not np.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5)


# --- 3: native vs fast layers ----------------------------------------------------------

def layer_paths(cfg: Config, methods: list[str], batch: tuple, tol: float) -> list[dict]:
    """Outputs and gradients of one batch with each layer path (eval mode: no dropout)."""
    results = []
    for method in methods:
        grads = {}
        for path in ("fast", "native"):
            model = _model(cfg, method)
            rng = np.random.default_rng(1)
            for layer in model.sublayers():  # LayerNorm scales away from 1, as in a pretrained ViT
                if isinstance(layer, paddle.nn.LayerNorm):
                    layer.weight.set_value(rng.uniform(0.5, 1.5, layer.weight.shape).astype("float32"))
            use_layers(model, path)
            model.eval()
            logits = model(batch[0])
            paddle.nn.functional.cross_entropy(logits, batch[1]).backward()
            grads[path] = {"logits": logits.numpy()}
            grads[path].update({n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None})
            del model
        fast, native = grads["fast"], grads["native"]
        worst, where = 0.0, ""
        for name in fast:
            scale = max(float(np.abs(fast[name]).max()), 1e-12)
            diff = float(np.abs(fast[name] - native.get(name, np.zeros_like(fast[name]))).max()) / scale
            if diff >= worst:
                worst, where = diff, name
        same_names = fast.keys() == native.keys()
        results.append({"method": method, "tensors": len(fast) - 1, "worst": worst, "where": where,
                        "ok": same_names and worst <= tol})
    return results


# --- 4: training runs --------------------------------------------------------------------

def _model(cfg: Config, method: str):
    c = _method_config(cfg, method)
    seed_everything(c.seed)
    model = build_model(c, 10)
    apply_transfer_method(model, c)
    return model


def _method_config(cfg: Config, method: str, overrides: list[str] = ()) -> Config:
    """``cfg`` with the transfer method ``method`` and the run's ``KEY=VALUE`` overrides."""
    c = copy.deepcopy(cfg)
    c.method.name, c.method.options, c.transfer.freeze = method, {}, False
    for item in overrides:
        key, _, value = item.partition("=")
        set_value(c, key, parse_scalar(value), stage="transfer")
    validate(c)
    return c


def plan_runs(args: argparse.Namespace, cfg: Config, device: str) -> list[Run]:
    other = "native" if layer_path("auto", device) == "fast" else "fast"
    runs = []
    for method in args.methods.split(","):
        runs += [Run(method, "fp32", []), Run(method, f"fp32 {other}", [f"model.layers={other}"]),
                 Run(method, "fp32 +recompute", ["recompute=true"])]
        for level in args.amp_levels.split(","):
            for dtype in args.amp_dtypes.split(","):
                run = Run(method, f"{level} {dtype}", [f"amp={level}", f"amp_dtype={dtype}"])
                try:
                    check_amp("transfer", level, dtype, device)
                except ConfigError as exc:
                    run.skipped = str(exc)
                runs.append(run)
    return runs


def train(run: Run, cfg: Config, batches: list[tuple], warmup: int, steps: int) -> None:
    c = _method_config(cfg, run.method, run.overrides)
    probe = MemoryProbe()
    probe.reset()
    seed_everything(c.seed)
    model = build_model(c, 10)
    apply_transfer_method(model, c)
    configure_training(model, c, "transfer")
    amp = amp_spec(c, "transfer")
    size = c.model.img_size
    net, optimizer = make_network(model, make_optimizer(model, c, "transfer"), amp,
                                  inputs=[InputSpec([None, 3, size, size], "float32", "image")],
                                  labels=[InputSpec([None, 1], "int64", "label")],
                                  float32_params=float32_parameters(parameter_groups(model, run.method)) if amp else ())
    net.prepare(optimizer, make_loss(c, "transfer"))
    paddle.seed(c.seed)
    for i in range(warmup + steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss = net.train_batch([x], [y])
        sync()
        if i >= warmup:
            run.step_s.append(time.perf_counter() - t0)
        run.losses.append(float(np.asarray(loss[0]).reshape(-1)[0]))
    run.peak_bytes = probe.read()["peak_tensor_bytes"]
    del net, optimizer, model
    gc.collect()
    if paddle.device.get_device().startswith("gpu"):
        paddle.device.cuda.empty_cache()


# --- 5: the comparison -------------------------------------------------------------------

def compare(runs: list[Run], amp_tol: float, fp32_tol: float) -> list[dict]:
    """Each run's largest relative loss difference from its method's float32 run, against its tolerance."""
    out = []
    for run in runs:
        if run.skipped or (run.name == "fp32" and not run.error):
            continue
        ref = next(r for r in runs if r.method == run.method and r.name == "fp32")
        if run.error or ref.error:
            out.append({"method": run.method, "run": run.name, "worst_rel": float("inf"), "tol": 0.0, "ok": False,
                        "error": run.error or f"float32 reference failed: {ref.error}"})
            continue
        rel = [abs(a - b) / max(abs(b), 1e-6) for a, b in zip(run.losses, ref.losses)]
        tol = fp32_tol if run.name.startswith("fp32") else amp_tol
        worst = max(rel) if rel else float("inf")
        finite = all(np.isfinite(run.losses))
        out.append({"method": run.method, "run": run.name, "worst_rel": worst, "tol": tol,
                    "ok": finite and worst <= tol})
    return out


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:.1f}"


def report(info: dict, bug: bool, paths: list[dict], runs: list[Run], checks: list[dict],
           args: argparse.Namespace) -> str:
    lines = [f"gpu_check: Paddle {info['paddle']} ({'CUDA' if info['cuda_build'] else 'CPU'} build) on "
             + (f"{info['gpu']} (compute capability {info['capability']}, CUDA {info['cuda']})"
                if info["device"] == "gpu" else "the CPU (--cpu-smoke)"),
             f"preset: {args.config}" + (" shrunk to ViT dim 32, depth 2 (--cpu-smoke)" if args.cpu_smoke else "")
             + f"; {args.warmup} warm-up + {args.steps} timed steps per run", "",
             f"Paddle's own LayerNorm, input gradient under a frozen scale: "
             f"{'WRONG (the bug is here; ppadapt works around it)' if bug else 'correct on this device'}", "",
             "native vs fast layers, one batch (max |difference| / max |value|, logits and every gradient):"]
    for p in paths:
        lines.append(f"  {p['method']:<12} {p['tensors']:>3} gradients  worst {p['worst']:.2e} ({p['where']})  "
                     f"{'ok' if p['ok'] else 'FAILED'}")
    lines += ["", f"{'method':<12} {'run':<18} {'median s/step':>13} {'peak MiB':>9}  first loss  last loss"]
    for r in runs:
        if r.skipped or r.error:
            lines.append(f"{r.method:<12} {r.name:<18} " + (f"skipped: {r.skipped}" if r.skipped else
                                                             f"FAILED: {r.error}"))
            continue
        median = statistics.median(r.step_s) if r.step_s else float("nan")
        lines.append(f"{r.method:<12} {r.name:<18} {median:>13.4f} {_mib(r.peak_bytes):>9}  {r.losses[0]:10.5f}  "
                     f"{r.losses[-1]:9.5f}")
    lines += ["", "losses against float32 (largest relative difference over all steps):"]
    for c in checks:
        if c.get("error"):
            lines.append(f"  {c['method']:<12} {c['run']:<18} FAILED: {c['error']}")
            continue
        lines.append(f"  {c['method']:<12} {c['run']:<18} {c['worst_rel']:.2e} <= {c['tol']:g}  "
                     f"{'ok' if c['ok'] else 'FAILED'}")
    failed = [p for p in paths if not p["ok"]] + [c for c in checks if not c["ok"]]
    lines += ["", "gpu_check: " + ("all checks passed" if not failed else f"{len(failed)} check(s) FAILED")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")  # paddle.Model's own step
    try:
        cfg = base_config(args)
        device = use_device(cfg.device)
    except ConfigError as exc:
        print(f"error: {exc} (gpu_check needs a GPU and Paddle's GPU wheel; --cpu-smoke runs its logic on the CPU)",
              file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rng = np.random.default_rng(0)
    size, batch = cfg.model.img_size, cfg.transfer.batch_size
    batches = [(paddle.to_tensor(rng.standard_normal((batch, 3, size, size)).astype("float32")),
                paddle.to_tensor(rng.integers(0, 10, (batch, 1)).astype("int64"))) for _ in range(4)]
    info = machine(device)
    bug = layer_norm_bug()
    paths = layer_paths(cfg, [*methods, "lora"] if "lora" not in methods else methods, batches[0], args.grad_tol)
    runs = plan_runs(args, cfg, device)
    for run in runs:
        if not run.skipped:
            print(f"gpu_check: {run.method}, {run.name}", file=sys.stderr, flush=True)
            try:
                train(run, cfg, batches, args.warmup, args.steps)
            except Exception as exc:  # noqa: BLE001 - reported as a failed check; the other runs go on
                run.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                gc.collect()
    checks = compare(runs, args.amp_tol, args.fp32_tol)
    print(report(info, bug, paths, runs, checks, args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "layer_norm_bug": bug, "layer_paths": paths,
                       "runs": [r.__dict__ for r in runs], "checks": checks}, f, indent=2)
    return 0 if all(p["ok"] for p in paths) and all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
