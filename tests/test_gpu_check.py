"""``tools/gpu_check.sh``: its logic on the CPU at a tiny size (``--cpu-smoke``), and one line
where there is no GPU. On a GPU it runs the tutorial preset (README, "Device, mixed precision,
layers and recomputation")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import paddle
import pytest

REPO = Path(__file__).resolve().parent.parent


def _check(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env={**env, "PYTHON": sys.executable}, timeout=300)


def test_cpu_smoke_runs_every_check(tmp_path):
    proc = _check("--cpu-smoke", "--json", tmp_path / "check.json")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert proc.stdout.strip().endswith("gpu_check: all checks passed")
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["machine"]["device"] == "cpu"
    assert report["layer_norm_bug"] is True  # Paddle 3.3.1's CPU kernel: the case ppadapt works around
    assert {p["method"] for p in report["layer_paths"]} == {"full", "adaptformer", "lora"}
    assert all(p["ok"] and p["tensors"] > 0 for p in report["layer_paths"])
    runs = {(r["method"], r["name"]): r for r in report["runs"]}
    for method in ("full", "adaptformer"):
        for name in ("fp32", "fp32 native", "fp32 +recompute"):
            run = runs[(method, name)]
            assert not run["skipped"] and len(run["losses"]) == 3 and len(run["step_s"]) == 2
            assert run["peak_bytes"] is None or run["peak_bytes"] > 0
        for name in ("O1 float16", "O2 float16", "O1 bfloat16", "O2 bfloat16"):
            assert runs[(method, name)]["skipped"].startswith(f"transfer.amp {name.split()[0]}")  # this CPU: why
    assert {(c["method"], c["run"]) for c in report["checks"]} == {
        (m, n) for m in ("full", "adaptformer") for n in ("fp32 native", "fp32 +recompute")}
    # recomputation on the CPU is exact; the other layer path agrees to float rounding
    assert all(c["worst_rel"] == 0.0 for c in report["checks"] if c["run"] == "fp32 +recompute")


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="the GPU build")
def test_without_a_gpu_it_says_so_in_one_line():
    proc = _check("--steps", "1")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "ccache" not in ln and "warnings.warn" not in ln]
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: --device gpu: this Paddle") and "--cpu-smoke" in lines[0]


def test_a_run_that_fails_is_a_failed_check_and_the_others_go_on(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclass looks its module up
    spec.loader.exec_module(gpu_check)
    real = gpu_check.train

    def train(run, *args):
        if run.name == "fp32 +recompute":
            raise RuntimeError("out of memory\nmore detail")
        real(run, *args)

    monkeypatch.setattr(gpu_check, "train", train)
    assert gpu_check.main(["--cpu-smoke", "--methods", "adaptformer"]) == 1
    out = capsys.readouterr().out
    assert "adaptformer  fp32 +recompute    FAILED: RuntimeError: out of memory" in out
    assert "adaptformer  fp32 native        0.00e+00 <= 0.001  ok" in out
    assert out.strip().endswith("gpu_check: 1 check(s) FAILED")
