"""Where training runs (``device``, ``--device``) and whether that device can run the mixed
precision a stage asks for (``amp``, ``amp_dtype``), decided before any data is read.

``auto`` is the device this Paddle was built for: the GPU build trains on the GPU, the CPU
wheel on the CPU. Asking for what the machine cannot do is one :class:`ConfigError` line
with the fix, never a silent fallback: Paddle itself only warns and trains in float32 when
``paddle.amp.auto_cast`` meets a device it does not support (the CPU, in this Paddle).

Whether the CPU can train in bfloat16 depends on the Paddle build, and
``paddle.amp.is_bfloat16_supported`` answers for the processor, not for the build's
kernels and ``auto_cast``, so :func:`cpu_bfloat16_support` tries it once on a tiny layer
and remembers the answer for the process.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F

from ..errors import ConfigError


def built_for() -> str:
    """``"gpu"`` for Paddle's CUDA build, else ``"cpu"``: the device ``auto`` means."""
    return "gpu" if paddle.is_compiled_with_cuda() else "cpu"


def resolve_device(choice: str) -> str:
    """``"cpu"`` or ``"gpu"`` for the config's ``device`` (``auto``, ``cpu``, ``gpu``); a GPU this
    Paddle cannot use is one ConfigError line that names the fix."""
    if choice == "auto":
        return built_for()
    if choice == "gpu":
        if not paddle.is_compiled_with_cuda():
            raise ConfigError(f"--device gpu: this Paddle ({paddle.__version__}) is the CPU build; install the GPU "
                              f"build (pip uninstall paddlepaddle, then pip install paddlepaddle-gpu=={paddle.__version__} "
                              "from Paddle's CUDA package index, see paddlepaddle.org.cn) or train with --device cpu")
        if paddle.device.cuda.device_count() < 1:
            raise ConfigError("--device gpu: this Paddle is the GPU build but sees no GPU (check nvidia-smi and "
                              "CUDA_VISIBLE_DEVICES), or train with --device cpu")
        return "gpu"
    if choice == "cpu":
        return "cpu"
    raise ConfigError(f"device must be auto, cpu or gpu, got {choice!r} (e.g. --device gpu)")


def use_device(choice: str) -> str:
    """Make ``choice``'s device Paddle's current one (a GPU chosen by
    ``paddle.distributed.launch`` is kept); returns ``"cpu"`` or ``"gpu"``."""
    device = resolve_device(choice)
    if paddle.device.get_device().split(":")[0] != device:
        paddle.set_device(device)
        if device == "cpu":  # the GPU build on the CPU: the CPU settings the import skipped
            from .runtime import tune_cpu_runtime
            tune_cpu_runtime()
    return device


@functools.lru_cache(maxsize=None)
def cpu_bfloat16_support() -> tuple[bool, str]:
    """``(True, "")`` if this Paddle trains in bfloat16 on the CPU, else ``(False, why)``.

    Tried once per process: a linear layer and a LayerNorm, forward and backward, under
    ``paddle.amp.auto_cast(dtype="bfloat16")`` on the CPU; it must compute in bfloat16 and give
    finite float32 gradients.
    """
    previous = paddle.device.get_device()
    paddle.set_device("cpu")
    try:
        rng = np.random.default_rng(0)
        x = paddle.to_tensor(rng.standard_normal((4, 8)).astype("float32"))
        w = paddle.to_tensor(rng.standard_normal((8, 8)).astype("float32"), stop_gradient=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Paddle's "amp_guard ... makes no effect": the answer below
            with paddle.amp.auto_cast(level="O1", dtype="bfloat16"):
                y = F.linear(x, w)
                z = F.layer_norm(y, y.shape[-1:])
        if y.dtype != paddle.bfloat16:
            return False, "paddle.amp.auto_cast computes in float32 on the CPU in this build"
        z.astype("float32").sum().backward()
        if w.grad is None or not bool(paddle.isfinite(w.grad.astype("float32")).all()):
            return False, "the bfloat16 backward gave no finite gradient"
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: not supported here
        return False, str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    finally:
        paddle.set_device(previous)


def check_amp(stage: str, level: str, dtype: str, device: str) -> None:
    """One ConfigError line, with the fix, if ``device`` cannot train stage ``stage`` with
    ``amp`` = ``level`` in ``dtype``; nothing for ``amp: off``."""
    if level == "off":
        return
    off = f"-o {stage}.amp=off"
    if device == "cpu":
        if dtype == "float16":
            raise ConfigError(f"{stage}.amp {level} in float16 needs a GPU: Paddle does not train in float16 on the "
                              f"CPU (train on a GPU with --device gpu, or {off})")
        supported, why = cpu_bfloat16_support()
        if not supported:
            raise ConfigError(f"{stage}.amp {level} in bfloat16 is not supported on the CPU by this Paddle "
                              f"({paddle.__version__}: {why}); set {off} (float32), or train on a GPU with "
                              "--device gpu")
        return
    place = paddle.CUDAPlace(max(paddle.distributed.ParallelEnv().dev_id, 0))
    if dtype == "float16" and not paddle.amp.is_float16_supported(place):
        raise ConfigError(f"{stage}.amp {level} in float16 needs a GPU of compute capability 7.0 or higher; this one "
                          f"is {paddle.device.cuda.get_device_name()}: set {off}")
    if dtype == "bfloat16" and not paddle.amp.is_bfloat16_supported(place):
        raise ConfigError(f"{stage}.amp {level} in bfloat16 needs a GPU of compute capability 8.0 or higher (A100, "
                          f"H100, RTX 30xx and later) and CUDA 11; this one is {paddle.device.cuda.get_device_name()}: "
                          f"set -o {stage}.amp_dtype=float16 (with loss scaling) or {off}")
