"""ppadapt against its PyTorch twin (tools/torch_twin.py) on the CPU, alternating in one run
(a dev tool; needs a Python with torch, given by --torch-python).

Each round runs ``bench.py`` (ppadapt's full and frozen AdaptFormer step, interleaved in
one process) and the twin's full and frozen steps (one process each), the order of the
two frameworks swapping every round, so drifting load hits both alike. Reported: the
median over rounds of each process's median step time, and ppadapt / PyTorch; and frozen / full,
from those medians and as the median and range of each round's own ratio.

    python tools/side_by_side.py --torch-python /path/to/torch-venv/bin/python --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ppadapt_steps(args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, str(REPO / "ppadapt" / "bench.py"), "--config", args.config, "--methods", "full,adaptformer",
           "--steps", str(args.steps), "--batch-size", str(args.batch), "--json", "--quiet", *args.bench_args]
    report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout)
    rows = {r["method"]: r for r in report["methods"]}
    return {"full": rows["full"]["train_s"]["median"], "frozen": rows["adaptformer"]["train_s"]["median"]}


def torch_steps(args: argparse.Namespace) -> dict[str, float]:
    out = {}
    for mode in ("full", "frozen"):
        cmd = [args.torch_python, str(REPO / "tools" / "torch_twin.py"), "--mode", mode, "--steps", str(args.steps),
               "--batch", str(args.batch), "--threads", str(args.threads), "--json", *args.twin_args]
        out[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["median_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-python", required=True)
    p.add_argument("--config", default="configs/cpu.yaml")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-arg", dest="bench_args", action="append", default=[],
                   help="passed to bench.py (e.g. --bench-arg=-o --bench-arg=model.embed_dim=768)")
    p.add_argument("--twin-arg", dest="twin_args", action="append", default=[],
                   help="passed to torch_twin.py (e.g. --twin-arg=--dim --twin-arg=768)")
    args = p.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"ppadapt": [], "torch": []}
    for r in range(args.rounds):
        order = ("ppadapt", "torch") if r % 2 == 0 else ("torch", "ppadapt")
        for who in order:
            runs[who].append(ppadapt_steps(args) if who == "ppadapt" else torch_steps(args))
            print(f"round {r + 1}/{args.rounds} {who}: {runs[who][-1]}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"{args.config}, batch {args.batch}, {args.rounds} rounds of {args.steps} steps, "
          f"load average after: {load[0]:.2f}")
    print("| step | PyTorch s | ppadapt s | ppadapt / PyTorch |\n| --- | ---: | ---: | ---: |")
    medians = {}
    for mode in ("full", "frozen"):
        t = statistics.median(x[mode] for x in runs["torch"])
        q = statistics.median(x[mode] for x in runs["ppadapt"])
        medians[mode] = (t, q)
        print(f"| {mode} | {t:.3f} | {q:.3f} | {q / t:.2f}x |")
    print(f"frozen / full: PyTorch {medians['frozen'][0] / medians['full'][0]:.3f}, "
          f"ppadapt {medians['frozen'][1] / medians['full'][1]:.3f}")
    # Each round's two steps ran in one process (interleaved, for ppadapt), so a round's own ratio
    # is free of the drift between rounds.
    for who, label in (("torch", "PyTorch"), ("ppadapt", "ppadapt")):
        ratios = sorted(x["frozen"] / x["full"] for x in runs[who])
        print(f"frozen / full per round, {label}: median {statistics.median(ratios):.3f}, "
              f"range {ratios[0]:.3f}-{ratios[-1]:.3f}")


if __name__ == "__main__":
    main()
