"""Checkpoints and adapter folders are written to a temporary name and renamed into place.

(a) A writer killed outright (SIGKILL) at random points never leaves a file that does not
    load: the path holds one of the versions it wrote, complete. Killed writers leave their
    temporary files behind; the next save of the same path removes them.
(b) A write that fails (disk full) raises one line that says the previous file is intact,
    leaves it loadable and leaves no temporary file; the training tools turn it into their
    one-line ``error:`` with how to go on (tested through the command line's entry point
    in-process, where the failure can be injected, and in a real subprocess with a folder
    in the way of best.pdparams).
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
from tiny import tiny_vit

from cifar_archive import write_cifar_archive
from ppadapt.runs import adapter_file, checkpoint as ckpt
from ppadapt.runs.adapter_file import read_adapter, save_adapter
from ppadapt.runs.checkpoint import atomic_save, atomic_write_json, load_state_dict, save_state_dict
from ppadapt.apps.cli import transfer_main
from ppadapt.errors import CheckpointError, CheckpointWriteError
from ppadapt.runs.resume_file import load_checkpoint

REPO = Path(__file__).resolve().parent.parent


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old")))


def snapshot(path: Path):
    """A file's bytes, or a folder's files' bytes by name."""
    return path.read_bytes() if path.is_file() else {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# --- (a) SIGKILL at random points -----------------------------------------------------------

WRITER = r"""
import sys
sys.path.insert(0, sys.argv[2])
import ppadapt, paddle
from ppadapt.runs.checkpoint import atomic_save

sys.stdin.readline()  # go
version = 0
while True:
    version += 1
    atomic_save({"version": paddle.to_tensor([version], dtype="int64"),
                 **{f"w{i}": paddle.full([512, 1024], float(version + i)) for i in range(4)}}, sys.argv[1])
    print(version, flush=True)
"""


def check_version(state: dict) -> int:
    """The version a complete file holds (every tensor agrees with it)."""
    version = int(state["version"].numpy()[0])
    for i in range(4):
        w = state[f"w{i}"].numpy()
        assert w.shape == (512, 1024) and np.all(w == version + i), f"w{i} is not version {version}'s"
    return version


def test_sigkill_at_random_points_leaves_a_complete_file(tmp_path):
    path = tmp_path / "model.pdparams"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    env["OMP_NUM_THREADS"] = "1"
    # Started together (Paddle's import is most of their time); each writes only when told to.
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(REPO)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    rng = random.Random(os.getpid())
    left_behind = []
    try:
        for round, writer in enumerate(writers):
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "1"  # one complete save at least
            time.sleep(rng.uniform(0.0, 0.2))
            if round % 2:  # every other kill lands inside a write: once its temporary file exists
                deadline = time.monotonic() + 5
                while not any(f"-{writer.pid}-" in name for name in temp_files(tmp_path)):
                    assert time.monotonic() < deadline
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0.0, 0.004))
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
            printed = [int(line) for line in writer.stdout.read().split()]
            last = printed[-1] if printed else 1
            # The file is whole and is the last completed save (killed before or after its print).
            assert check_version(load_state_dict(str(path))) in (last, last + 1)
            temps = temp_files(tmp_path)
            assert all(f"-{writer.pid}-" in name for name in temps), temps  # earlier ones were removed
            left_behind += temps
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert left_behind, "no kill landed during a write"
    atomic_save({"version": paddle.to_tensor([0], dtype="int64"),
                 **{f"w{i}": paddle.full([512, 1024], float(i)) for i in range(4)}}, str(path))
    assert check_version(load_state_dict(str(path))) == 0
    assert os.listdir(tmp_path) == ["model.pdparams"]  # the next save removed the killed writers' temps


DIR_WRITER = r"""
import sys
sys.path.insert(0, sys.argv[2])
import ppadapt, paddle
from ppadapt.runs.adapter_file import save_adapter

model = paddle.nn.Linear(512, 512)
sys.stdin.readline()  # go
version = 0
while True:
    version += 1
    for p in model.parameters():
        p.set_value(paddle.full(p.shape, float(version)))
    save_adapter(model, sys.argv[1], {"method": "linear", "version": version})
    print(version, flush=True)
"""


def check_adapter_version(folder: Path) -> int:
    """The version a complete adapter folder holds (its config and every tensor agree)."""
    tensors, meta = read_adapter(folder)
    assert sorted(tensors) == ["bias", "weight"]
    assert all(np.all(t.numpy() == meta["version"]) for t in tensors.values())
    return meta["version"]


def test_sigkill_while_writing_an_adapter_folder_leaves_a_complete_one(tmp_path):
    path = tmp_path / "adapter"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    env["OMP_NUM_THREADS"] = "1"
    writers = [subprocess.Popen([sys.executable, "-c", DIR_WRITER, str(path), str(REPO)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    rng = random.Random(os.getpid())
    inside = 0
    try:
        for round, writer in enumerate(writers):
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "1"
            time.sleep(rng.uniform(0.0, 0.1))
            if round % 2 == 0:  # land inside a write: once its temporary folder exists
                deadline = time.monotonic() + 5
                while not any(f"-{writer.pid}-" in name for name in temp_files(tmp_path)):
                    assert time.monotonic() < deadline
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0.0, 0.002))
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
            printed = [int(line) for line in writer.stdout.read().split()]
            last = printed[-1] if printed else 1
            inside += any(f"-{writer.pid}-" in name for name in temp_files(tmp_path))
            if path.exists():  # the last completed save, or the one whose print the kill stopped
                assert check_adapter_version(path) in (last, last + 1)
            else:  # killed between the two renames: the previous folder waits aside, complete
                aside = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
                assert len(aside) == 1 and check_adapter_version(aside[0]) == last
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert inside, "no kill landed during a write"
    save_adapter(paddle.nn.Linear(2, 2), path, {"method": "linear", "version": 0})
    assert os.listdir(tmp_path) == ["adapter"]  # the killed writers' temporary folders were removed


def test_temps_of_live_processes_and_other_files_are_kept(tmp_path):
    path = tmp_path / "best.pdparams"
    live = tmp_path / f".best.pdparams.{ckpt._HOST}-{os.getppid()}-0123abcd.tmp"  # pytest's parent: alive
    other_host = tmp_path / ".best.pdparams.ffffffff-999999999-0123abcd.tmp"
    other_file = tmp_path / f".final.pdparams.{ckpt._HOST}-999999999-0123abcd.tmp"
    dead = tmp_path / f".best.pdparams.{ckpt._HOST}-999999999-0123abcd.tmp"  # beyond pid_max: not running
    for p in (live, other_host, other_file, dead):
        p.write_bytes(b"partial")
    atomic_save(tiny_vit().state_dict(), str(path))
    assert sorted(os.listdir(tmp_path)) == sorted(["best.pdparams", live.name, other_host.name, other_file.name])


# --- (b) a failing write ---------------------------------------------------------------------

def fail_in_write(monkeypatch, victim: str = "") -> None:
    """paddle.save / json.dump / safetensors of a temporary file of ``victim`` (any, if empty)
    write half, then the disk is full."""
    real_save, real_dump, real_st = paddle.save, json.dump, ckpt.write_safetensors

    def hit(target: str) -> bool:  # a temporary file of victim, or a file in its temporary folder
        return any(part.startswith(f".{victim}") for part in Path(target).parts[-2:])

    def save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        if hit(str(path)):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            raise enospc()

    def dump(obj, fp, *args, **kwargs):
        real_dump(obj, fp, *args, **kwargs)
        if hit(getattr(fp, "name", "")):
            fp.flush()
            fp.truncate(fp.tell() // 2)
            raise enospc()

    def write_safetensors(state, path, *args, **kwargs):
        real_st(state, path, *args, **kwargs)
        if hit(str(path)):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            raise enospc()

    monkeypatch.setattr(paddle, "save", save)
    monkeypatch.setattr(json, "dump", dump)
    monkeypatch.setattr(ckpt, "write_safetensors", write_safetensors)
    monkeypatch.setattr(adapter_file, "write_safetensors", write_safetensors)


def fail_in_fsync(monkeypatch, victim: str = "") -> None:
    real = os.fsync

    def fsync(fd):
        if any(part.startswith(f".{victim}") for part in Path(os.readlink(f"/proc/self/fd/{fd}")).parts[-2:]):
            raise enospc()
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _model(seed: int) -> paddle.nn.Layer:
    paddle.seed(seed)
    return tiny_vit()


WRITERS = {  # name: (write version ``seed`` to ``path``, read ``path`` back, the path's name)
    "atomic_save": (lambda path, seed: atomic_save(_model(seed).state_dict(), str(path)),
                    lambda path: load_state_dict(str(path)), "best.pdparams"),
    "safetensors": (lambda path, seed: save_state_dict(_model(seed).state_dict(), path),
                    lambda path: load_state_dict(str(path)), "best.safetensors"),
    "atomic_write_json": (lambda path, seed: atomic_write_json({"seed": seed, "history": [1.5] * 100}, str(path)),
                          lambda path: json.loads(path.read_text()), "run.json"),
    "save_adapter": (lambda path, seed: save_adapter(_model(seed), path, {"method": "full", "seed": seed}),
                     lambda path: read_adapter(path)[1], "adapter"),
}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to find the fsynced file")
@pytest.mark.parametrize("where", [fail_in_write, fail_in_fsync], ids=["write", "fsync"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_disk_full_keeps_the_previous_file_and_says_so_in_one_line(tmp_path, monkeypatch, writer, where):
    write, read, name = WRITERS[writer]
    path = tmp_path / name
    write(path, 1)
    before, first = snapshot(path), read(path)

    where(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        write(path, 2)
    monkeypatch.undo()

    message = str(info.value)
    assert message == (f"no space left on device while writing {path}; the previous {path.name} is intact "
                       "(free some space or fix the permissions, then save again)")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert snapshot(path) == before
    loaded = read(path)
    if writer in ("atomic_save", "safetensors"):
        assert all(np.array_equal(loaded[k].numpy(), first[k].numpy()) for k in first)
    else:
        assert loaded == first
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left


def test_disk_full_on_a_first_save_writes_nothing(tmp_path, monkeypatch):
    fail_in_write(monkeypatch)
    with pytest.raises(CheckpointWriteError, match=r"no space left on device while writing .*; no final.pdparams "
                                                   r"was written \(free some space"):
        atomic_save(_model(0).state_dict(), str(tmp_path / "final.pdparams"))
    assert os.listdir(tmp_path) == []


# --- (b) through the training tools ----------------------------------------------------------

TINY = ["-o", "model.embed_dim=32", "-o", "model.depth=2", "-o", "model.num_heads=2", "-o", "model.patch_size=8",
        "-o", "adapter.bottleneck=8", "-o", "warmup_steps=2", "-o", "augment=false", "--batch-size", "64",
        "--epochs", "1", "--quiet"]
LOADERS = {"run.json": lambda p: json.loads(p.read_text()), "best.pdparams": load_state_dict,
           "resume.pdckpt": load_checkpoint, "final.pdparams": load_state_dict, "adapter": read_adapter}
FILES = tuple(LOADERS)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    return write_cifar_archive(tmp_path_factory.mktemp("data") / "cifar-10-python.tar.gz", "cifar10",
                               train_per_class=4, test_per_class=2)


def transfer_args(cifar10, out) -> list[str]:
    # --freeze: AdaptFormer, so the run writes all five files, the adapter folder included
    return ["--freeze", "--pretrained", "none", "--data-file", str(cifar10), "--output", str(out), *TINY]


@pytest.mark.parametrize("victim", FILES)
def test_transfer_cli_turns_a_full_disk_into_one_line(cifar10, tmp_path, monkeypatch, capsys, victim):
    args = transfer_args(cifar10, tmp_path)
    run = tmp_path / "tutorial_transfer_cifar10_frozen"
    assert transfer_main(args) == 0  # an earlier run's files
    before = {name: snapshot(run / name) for name in FILES}
    capsys.readouterr()

    fail_in_write(monkeypatch, victim)
    assert transfer_main(args) == 2
    monkeypatch.undo()

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"error: no space left on device while writing {run / victim}; "
                           f"the previous {victim} is intact; "), line
    if victim in ("final.pdparams", "adapter"):  # after the epoch's resume.pdckpt
        assert line.endswith(f"the last good resumable checkpoint is {run / 'resume.pdckpt'} (end of epoch 1/1); "
                             "free some space or fix the permissions, then continue with: "
                             f"python ppadapt/transfer.py --resume {run}"), line
    else:
        assert line.endswith("no resumable checkpoint was written yet; free some space or fix the permissions, "
                             "then start the run again"), line
    assert snapshot(run / victim) == before[victim]
    assert temp_files(run) == []
    LOADERS[victim](run / victim)  # and still loads
    if victim == "final.pdparams":  # the hint works: the run finishes from its resume.pdckpt
        assert transfer_main(["--resume", str(run), "--quiet"]) == 0
        assert (run / victim).read_bytes() != before[victim]
        assert load_checkpoint(run / "resume.pdckpt")["finished"]


def test_a_folder_in_the_way_of_best_pdparams_is_one_line_in_a_real_run(cifar10, tmp_path):
    run = tmp_path / "tutorial_transfer_cifar10_frozen"
    (run / "best.pdparams").mkdir(parents=True)
    (run / "best.pdparams" / "keep.txt").write_text("mine\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    proc = subprocess.run([sys.executable, str(REPO / "ppadapt" / "transfer.py"), *transfer_args(cifar10, tmp_path)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"error: cannot write {run / 'best.pdparams'}: a directory of that name is in the way; no best.pdparams was "
        "written; no resumable checkpoint was written yet; free some space or fix the permissions, then start the "
        "run again"]
    assert (run / "best.pdparams" / "keep.txt").read_text() == "mine\n"
    assert temp_files(run) == []
