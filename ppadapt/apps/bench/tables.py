"""The plain-text report of a benchmark: a header, a time table and a size/memory/FLOPs table."""
from __future__ import annotations

import math
from typing import Sequence

from ...models.build import Architecture, describe_architecture
from ...models.swin import SwinConfig
from ...utils.formatting import format_size, size_in


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def _fmt_mib(n: int | None) -> str:
    """A cell of a column headed MiB."""
    return "n/a" if n is None else size_in(n, "MiB")


def _fmt_bytes(n: int) -> str:
    """Bytes in the unit that keeps small optimizer states readable."""
    return format_size(n, ("B", "KiB", "MiB"))


def _decimals(values: Sequence[float]) -> int:
    """Decimals that give the smallest value three significant digits."""
    smallest = min((v for v in values if v > 0), default=1.0)
    return max(0, 2 - math.floor(math.log10(smallest)))


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_report(report: dict) -> str:
    """The plain-text report: a header, a time table and a size/memory/FLOPs table."""
    mach, setup, gemm = report["machine"], report["setup"], report["gemm"]
    rows = report["methods"]
    load = report["machine"].get("loadavg_after")
    compute = [f"{setup['layers']} layers"] if setup.get("layers") else []
    if setup.get("amp") not in (None, "off"):
        compute.append(f"amp {setup['amp']}")
    if setup.get("recompute") is True:
        compute.append("recompute")
    lines = [
        f"ppadapt bench: {setup['config']} ({setup['model']}), {setup['input']}, batch {setup['batch_size']}, "
        f"{setup['classes']} classes, {setup['warmup']} warm-up + {setup['steps']} timed steps per method, "
        f"{setup['order']} order" + (f"; {', '.join(compute)}" if compute else ""),
        f"machine: {mach['cpu']}, {mach['cores']} cores, {mach['device']}, Paddle {mach['paddle']}, "
        f"OMP_NUM_THREADS={mach['OMP_NUM_THREADS']}, load average {mach['loadavg']} before"
        + (f", {load} after" if load else ""),
        f"fp32 GEMM {'x'.join(map(str, gemm['shape']))}: {gemm['median']:.1f} GFLOP/s median of {gemm['n']} "
        f"(min {gemm['min']:.1f}, max {gemm['max']:.1f}; medians "
        + ", ".join(f"{v:.1f} {k}" for k, v in gemm["phase_medians"].items()) + ")",
    ]
    if setup.get("data_s_per_batch") is not None:
        lines.append(f"data: {setup['data_s_per_batch'] * 1e3:.1f} ms per batch to load and augment "
                     "(before the timing; not in the step times)")
    lines.append("")
    time_rows = []
    dt = _decimals([r["train_s"]["min"] for r in rows])
    di = _decimals([r["infer_s"]["min"] for r in rows])
    for r in rows:
        t, i = r["train_s"], r["infer_s"]
        ratio = r.get("ratio_to_full")
        time_rows.append([
            r.get("label", r["method"]), f"{t['median']:.{dt}f}", f"{t['min']:.{dt}f}-{t['max']:.{dt}f}",
            f"{r['train_images_per_s']['median']:.1f}", f"{ratio['train']:.2f}" if ratio else "-",
            f"{i['median']:.{di}f}", f"{i['min']:.{di}f}-{i['max']:.{di}f}",
            f"{r['infer_images_per_s']['median']:.1f}"])
    lines += _table(["method", "train s/step", "min-max", "img/s", "x full", "infer s/batch", "min-max", "img/s"],
                    time_rows, right={1, 2, 3, 4, 5, 6, 7})
    lines.append("")
    size_rows = []
    for r in rows:
        p, m, f = r["params"], r["memory"], r["flops"]
        rss = _fmt_mib(m["peak_rss_bytes"])
        if m["peak_rss_increase_bytes"] is not None:
            rss += f" (+{_fmt_mib(m['peak_rss_increase_bytes'])})"
        size_rows.append([
            r.get("label", r["method"]), _fmt_count(p["trainable"]), _fmt_count(p["without_head"]),
            _fmt_bytes(r["optimizer_state_bytes"]), rss, _fmt_mib(m["peak_tensor_bytes"]),
            f"{f['train'] / 1e9:.2f}", f"{f['train_over_forward']:.2f}",
            f"{r['train_gflops_per_s']:.1f}", f"{100 * r['train_gemm_share']:.0f}%"])
    lines += _table(["method", "trainable", "w/o head", "opt state", "peak RSS MiB (+incr.)", "tensors MiB",
                     "train GFLOP", "/fwd", "GFLOP/s", "of GEMM"], size_rows, right=set(range(1, 10)))
    mem_note = ("peak RSS: VmHWM over build + warm-up, reset per method; +incr. = over the RSS at the reset"
                if rows and rows[0]["memory"]["rss_source"] == "VmHWM"
                else "peak RSS: getrusage ru_maxrss, process-wide (not per method)")
    lines += ["", f"{mem_note}; tensors = peak of Paddle's allocator over the same window.",
              "train GFLOP: matmul FLOPs of forward + backward of one step (element-wise ops ignored); "
              "/fwd = over the forward's; GFLOP/s = train GFLOP / median step; of GEMM = share of the GEMM rate."]
    lines += recompute_table(rows)
    return "\n".join(lines)


def recompute_table(rows: Sequence[dict]) -> list[str]:
    """Peak memory of each method without and with ``recompute`` (bench ``--recompute``), or nothing."""
    pairs = [(r, next(o for o in rows if o["method"] == r["method"] and o.get("recompute")))
             for r in rows if not r.get("recompute") and any(o["method"] == r["method"] and o.get("recompute")
                                                               for o in rows)]
    if not pairs:
        return []

    def saved(a: int | None, b: int | None) -> str:
        return "n/a" if not a or b is None else f"{100 * (a - b) / a:.0f}%"

    table = []
    for plain, rc in pairs:
        mp, mr = plain["memory"], rc["memory"]
        table.append([plain["method"], _fmt_mib(mp["peak_tensor_bytes"]), _fmt_mib(mr["peak_tensor_bytes"]),
                      saved(mp["peak_tensor_bytes"], mr["peak_tensor_bytes"]),
                      _fmt_mib(mp["peak_rss_increase_bytes"]), _fmt_mib(mr["peak_rss_increase_bytes"]),
                      f"{rc['train_s']['median'] / plain['train_s']['median']:.2f}"])
    return ["", *_table(["method", "tensors MiB", "+rc", "saved", "RSS incr. MiB", "+rc", "step +rc / w/o"],
                        table, right=set(range(1, 7))),
            "", "+rc: recompute: true (each block's activations recomputed in the backward); tensors: peak of "
                "Paddle's allocator over build + warm-up; step +rc / w/o: median training step with over without."]


def model_words(arch: Architecture) -> str:
    """The benchmarked model in the setup line: a ViT's sizes, or a Swin's description."""
    if isinstance(arch, SwinConfig):
        return describe_architecture(arch)
    return f"ViT dim {arch.embed_dim}, depth {arch.depth}, heads {arch.num_heads}, patch {arch.patch_size}, img {arch.img_size}"
