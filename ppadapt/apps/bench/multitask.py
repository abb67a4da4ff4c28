"""``bench.py --multitask``: what serving many tasks on one backbone costs, measured in one process.

The backbone is the config's architecture with random weights and no carried modules;
each task is an adapter of one of the methods (cycled), its tensors random with the
right shapes, registered in memory as :class:`~ppadapt.runs.tasks.TaskFile` objects
(speed and memory do not depend on the values, nor on the file format). Measured:

* **Memory**, for each task count: the backbone with that many tasks
  (:class:`~ppadapt.apps.multitask.MultiTaskModel`) against the same tasks as separate full
  models. Each setting is built, read, and freed before the next (``malloc_trim`` hands the
  freed heap back to the OS; one full model served a batch before the first, so one-time
  allocations count in none); the numbers are the increases over the resident set before
  it: the resident set after building and after one batch per task, and the bytes held by
  Paddle's allocator (exact for tensors, whatever the allocator keeps around).
* **Switching**: the time of :meth:`~ppadapt.apps.multitask.MultiTaskModel.activate` to a
  task of each method from the task before it (all tasks in a cycle), with the bytes each
  switch copies into the backbone (BitFit's biases).
* **Throughput** at the batch size: single-task batches through the shared backbone, the
  same task as its own full model, and mixed batches with 2, 5, ... tasks (each split per
  task, the groups run one after the other).
"""
from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import paddle

from ...methods import METHODS, applied_methods, get_method
from ...models.build import Architecture, build_backbone
from ...runs.backbone import Backbone
from ...runs.checkpoint import load_weights
from ...runs.tasks import TaskFile
from ...utils.formatting import size_in
from ..multitask import MultiTaskModel
from .probes import _status_kib, _tensor_stat, machine_info, malloc_trim
from .stats import rate, summarize
from .tables import _table, model_words

DEFAULT_TASKS = (1, 5, 20)
DEFAULT_METHODS = tuple(name for name in METHODS if name != "full")  # every method that writes an adapter
MIXES = (2, 5, 20)  # tasks in a mixed batch


def random_backbone(arch: Architecture, seed: int = 0) -> dict:
    """A plain ViT's tensors (no head) as numpy arrays."""
    paddle.seed(seed)
    return {k: v.numpy() for k, v in build_backbone(arch, 0).state_dict().items()}


def random_tasks(arch: Architecture, count: int, methods: Sequence[str], classes: int,
                 options: dict[str, dict] | None = None, seed: int = 0) -> list[TaskFile]:
    """``count`` adapters, the methods cycled, with random tensors of the right shapes."""
    rng = np.random.default_rng(seed)
    model_dict = {**dataclasses.asdict(arch), "carry": {}}
    out = []
    for i in range(count):
        name = methods[i % len(methods)]
        tuner = get_method(name)
        model = build_backbone(arch, classes)
        tuner.apply_to(model, **(options or {}).get(name, {}))
        tensors = {k: (v.numpy() + rng.normal(0, 0.02, v.shape)).astype(v.numpy().dtype)
                   for k, v in model.state_dict().items() if tuner.is_trainable(k)}
        recorded = applied_methods(model)
        out.append(TaskFile(path=Path(f"<random {name} adapter {i}>"), tensors=tensors, method=name,
                            options=dict(recorded[name]), methods=dict(recorded), model=model_dict,
                            class_names=[f"class{c}" for c in range(classes)], carried=[]))
    return out


def full_model(arch: Architecture, backbone: dict, task: TaskFile) -> "paddle.nn.Layer":
    """One task as its own full model: the backbone's tensors copied, its method applied."""
    model = build_backbone(arch, task.num_classes)
    tuner = get_method(task.method)
    tuner.apply(model, MultiTaskModel._config(task.method, task.options, "bench"))
    load_weights(model, {**backbone, **task.tensors})
    model.eval()
    for param in model.parameters():
        param.stop_gradient = True
    return model


def shared_model(arch: Architecture, backbone: dict, tasks: Sequence[TaskFile]) -> MultiTaskModel:
    model = build_backbone(arch, 0)
    load_weights(model, backbone)
    model.eval()
    for param in model.parameters():
        param.stop_gradient = True
    served = MultiTaskModel(Backbone(model=model, mean=(0.5,) * 3, std=(0.5,) * 3, source="random weights"))
    for i, task in enumerate(tasks):
        served.add_task(f"t{i}", task)
    return served


def _resident() -> tuple[int, int | None]:
    """(resident bytes, bytes Paddle's allocator holds) now."""
    return (_status_kib("VmRSS") or 0) * 1024, _tensor_stat("current")


def _settle() -> tuple[int, int | None]:
    gc.collect()
    malloc_trim()
    return _resident()


def _increase(now: tuple[int, int | None], base: tuple[int, int | None]) -> dict:
    return {"rss_bytes": now[0] - base[0],
            "tensor_bytes": None if now[1] is None or base[1] is None else now[1] - base[1]}


def measure_memory(arch: Architecture, backbone: dict, tasks: Sequence[TaskFile], counts: Sequence[int],
                   batch: np.ndarray, log: Callable[[str], None]) -> list[dict]:
    """Per task count: the increases of the shared and the separate setting (see the module doc)."""
    warm = full_model(arch, backbone, tasks[0])  # the first forward's one-time allocations, before any baseline
    with paddle.no_grad():
        warm(paddle.to_tensor(batch))
    warm = None
    rows = []
    for n in counts:
        row: dict = {"tasks": n}
        for kind in ("shared", "separate"):
            base = _settle()
            if kind == "shared":
                served = shared_model(arch, backbone, tasks[:n])
                loaded = _resident()
                for name in served.tasks:
                    served.logits(batch, name)
                held = served.nbytes()
                row["shared_held_bytes"] = held["backbone"] + held["tasks"] + held["pristine"]
            else:
                models = [full_model(arch, backbone, task) for task in tasks[:n]]
                loaded = _resident()
                with paddle.no_grad():
                    for model in models:
                        model(paddle.to_tensor(batch))
                row["separate_held_bytes"] = sum(int(np.prod(v.shape)) * v.element_size()
                                                 for model in models for v in model.state_dict().values())
            served_once = _resident()
            row[kind] = {"loaded": _increase(loaded, base), "served": _increase(served_once, base)}
            served = models = None  # type: ignore[assignment]
            log(f"memory: {n} task(s), {kind}: +{size_in(row[kind]['served']['rss_bytes'], 'MiB')} MiB resident")
        rows.append(row)
    _settle()
    return rows


def measure_switch(served: MultiTaskModel, rounds: int) -> list[dict]:
    """Per method: the time to activate one of its tasks from the task before it in the cycle."""
    names = list(served.tasks)
    times: dict[str, list[float]] = {}
    served.activate(names[-1])
    for _ in range(rounds):
        for name in names:
            start = time.perf_counter()
            served.activate(name)
            times.setdefault(served.task(name).method, []).append(time.perf_counter() - start)
    served.deactivate()
    rows = []
    for method, samples in times.items():
        task = next(t for t in served.tasks.values() if t.method == method)
        copied = sum(int(np.prod(v.shape)) * v.element_size() for v in task.overrides.values())
        rows.append({"method": method, "switch_s": summarize(samples), "copied_bytes": copied,
                     "task_bytes": task.nbytes()})
    return rows


def _timed(fn: Callable[[], object], steps: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return summarize(samples)


def measure_throughput(arch: Architecture, backbone: dict, tasks: Sequence[TaskFile], served: MultiTaskModel,
                       batch: np.ndarray, steps: int, warmup: int, log: Callable[[str], None]) -> dict:
    """Images/s: per method, single-task batches shared and as the task's own model; mixed batches."""
    size = len(batch)
    x = paddle.to_tensor(batch)
    per_method = []
    names = list(served.tasks)
    for method in dict.fromkeys(t.method for t in served.tasks.values()):
        index = next(i for i, n in enumerate(names) if served.task(n).method == method)
        name = names[index]
        shared = _timed(lambda: served.logits(x, name), steps, warmup)
        model = full_model(arch, backbone, tasks[index])
        with paddle.no_grad():
            separate = _timed(lambda: model(x), steps, warmup)
        model = None
        per_method.append({"method": method, "shared_s": shared, "separate_s": separate,
                           "shared_ips": rate(size, shared), "separate_ips": rate(size, separate)})
        log(f"throughput: {method}: {size / shared['median']:.0f} images/s shared, "
            f"{size / separate['median']:.0f} as its own model")
    mixed = []
    for k in [m for m in MIXES if m <= len(names)] or [len(names)]:
        order = [names[i % k] for i in range(size)]
        seconds = _timed(lambda: served.logits_per_image(batch, order), steps, warmup)
        mixed.append({"tasks": k, "seconds": seconds, "ips": rate(size, seconds)})
        log(f"throughput: mixed batch over {k} tasks: {size / seconds['median']:.0f} images/s")
    return {"per_method": per_method, "mixed": mixed}


def bench_multitask(arch: Architecture, *, counts: Sequence[int] = DEFAULT_TASKS,
                    methods: Sequence[str] = DEFAULT_METHODS, options: dict[str, dict] | None = None,
                    classes: int = 10, batch_size: int = 32, steps: int = 10, warmup: int = 2,
                    log: Callable[[str], None] = lambda line: None) -> dict:
    """The whole measurement (see the module doc) as a report dict."""
    counts = sorted(set(counts))
    log(f"making {max(counts)} random adapters ({', '.join(methods)} cycled) and a random backbone")
    backbone = random_backbone(arch)
    tasks = random_tasks(arch, max(counts), methods, classes, options)
    batch = np.random.default_rng(1).standard_normal((batch_size, arch.in_chans, arch.img_size, arch.img_size)
                                                     ).astype("float32")
    memory = measure_memory(arch, backbone, tasks, counts, batch, log)
    served = shared_model(arch, backbone, tasks)
    switch = measure_switch(served, max(3, steps))
    throughput = measure_throughput(arch, backbone, tasks, served, batch, steps, warmup, log)
    backbone_bytes = sum(v.nbytes for v in backbone.values())
    return {"machine": machine_info(), "setup": {
        "model": model_words(arch), "backbone_bytes": backbone_bytes, "methods": list(methods),
        "counts": counts, "classes": classes, "batch_size": batch_size, "steps": steps, "warmup": warmup},
        "memory": memory, "switch": switch, "throughput": throughput}


def _mib(n: int | None) -> str:
    return "n/a" if n is None else size_in(n, "MiB")


def format_multitask(report: dict) -> str:
    """The plain-text tables of :func:`bench_multitask`."""
    setup, mach = report["setup"], report["machine"]
    lines = [f"ppadapt bench --multitask: {setup['config']} ({setup['model']}), random weights, backbone "
             f"{_mib(setup['backbone_bytes'])} MiB; adapters cycle {', '.join(setup['methods'])}; "
             f"{setup['classes']} classes per task; batch {setup['batch_size']}, {setup['warmup']} warm-up + "
             f"{setup['steps']} timed runs",
             f"machine: {mach['cpu']}, {mach['cores']} cores, {mach['device']}, Paddle {mach['paddle']}, "
             f"load average {mach['loadavg']} before" + (f", {mach['loadavg_after']} after"
                                                         if mach.get("loadavg_after") else ""),
             "", "memory (MiB over the process before each setting; resident: after loading / after one batch "
                 "per task; tensors: Paddle's allocator after the batches; weights: the bytes of the tensors held)"]
    rows = []
    for r in report["memory"]:
        s, p = r["shared"], r["separate"]
        ratios = [p[when]["rss_bytes"] / s[when]["rss_bytes"] if s[when]["rss_bytes"] > 0 else float("nan")
                  for when in ("loaded", "served")]
        rows.append([str(r["tasks"]),
                     f"{_mib(s['loaded']['rss_bytes'])} / {_mib(s['served']['rss_bytes'])}",
                     _mib(s["served"]["tensor_bytes"]), _mib(r["shared_held_bytes"]),
                     f"{_mib(p['loaded']['rss_bytes'])} / {_mib(p['served']['rss_bytes'])}",
                     _mib(p["served"]["tensor_bytes"]), _mib(r["separate_held_bytes"]),
                     f"{ratios[0]:.1f}x / {ratios[1]:.1f}x"])
    lines += _table(["tasks", "one backbone: resident", "tensors", "weights", "separate models: resident",
                     "tensors", "weights", "separate / shared resident"], rows, set(range(8)))
    lines += ["", "switching tasks (activate, from the task before it in a cycle over all tasks)"]
    rows = [[r["method"], f"{1e3 * r['switch_s']['median']:.3f}", f"{1e3 * r['switch_s']['min']:.3f}",
             f"{1e3 * r['switch_s']['max']:.3f}", size_in(r["copied_bytes"], "KiB"), size_in(r["task_bytes"], "KiB")]
            for r in report["switch"]]
    lines += _table(["method", "median ms", "min ms", "max ms", "KiB copied in", "task KiB"], rows,
                    {1, 2, 3, 4, 5})
    t = report["throughput"]
    lines += ["", f"throughput (images/s, median; batch {setup['batch_size']})"]
    rows = [[r["method"], f"{r['shared_ips']['median']:.0f}", f"{r['separate_ips']['median']:.0f}",
             f"{r['shared_ips']['median'] / r['separate_ips']['median']:.2f}"] for r in t["per_method"]]
    lines += _table(["single-task batch", "one backbone", "own full model", "ratio"], rows, {1, 2, 3})
    rows = [[f"mixed over {m['tasks']} tasks", f"{m['ips']['median']:.0f}"] for m in t["mixed"]]
    lines += [""] + _table(["mixed batch", "one backbone"], rows, {1})
    return "\n".join(lines)


__all__ = ["DEFAULT_METHODS", "DEFAULT_TASKS", "bench_multitask", "format_multitask", "full_model", "random_backbone",
           "random_tasks"]
