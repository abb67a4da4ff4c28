"""Bad input, tried case by case on the real command-line tools (issue 6).

Every case runs a tool as a user does (``python ppadapt/<tool>.py ...`` in a subprocess)
with an output folder that already holds an earlier run's files: the copies of a real
tiny pretraining run (``best.pdparams``, ``final.pdparams``, ``run.json``,
``resume.pdckpt``, ``vdl/``) where the command would write, a run directory with
corrupt checkpoints, an earlier export. A failing case must exit with status 2 and
print exactly one line on stderr, ``error: ...``, that names the problem and the fix
(the fragments listed with the case), with no traceback, and must leave that folder
exactly as it was: every file byte-identical, none added or removed.

Some inputs are not errors and must work: an unreadable image in an image folder
(skipped, counted in one ``warning:`` line, training goes on), and a grey or odd-sized
image given to ``predict.py`` (converted and resized, like the run's own data).

The argument checks get no usable data file, which shows that they fail before any
data is read. The cases run a few at a time: each is mostly Paddle's import.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import paddle
import pytest
from PIL import Image

from cifar_archive import write_cifar_archive, write_image_folder
from ppadapt.methods.adaptformer import AdaptFormerConfig, apply_adaptformer
from ppadapt.models import VisionTransformer, ViTConfig

REPO = Path(__file__).resolve().parent.parent
PRE = "tiny_pretrain_cifar100"  # the earlier run, and transfer.py's default pretrained checkpoint
TINY_YAML = """\
model: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}
adapter: {bottleneck: 8}
pretrain: {dataset: cifar100, epochs: 1, batch_size: 64, warmup_steps: 2, log_freq: 50, augment: false}
transfer: {dataset: cifar10, epochs: 1, batch_size: 64, warmup_steps: 2, log_freq: 50, augment: false}
"""
TINY_MODEL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def run_tool(tool: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    env["OMP_NUM_THREADS"] = "1"  # several cases run at once
    return subprocess.run([sys.executable, str(REPO / "ppadapt" / f"{tool}.py"), *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


# --- the data, checkpoints and earlier run every case starts from -------------------------

@dataclass
class World:
    root: Path
    data: Path
    config: Path
    template: Path  # a real run directory of train.py


def _make_data(data: Path) -> None:
    c100 = write_cifar_archive(data / "cifar-100-python.tar.gz", "cifar100", train_per_class=1, test_per_class=1)
    c10 = write_cifar_archive(data / "cifar-10-python.tar.gz", "cifar10", train_per_class=4, test_per_class=2)
    assert c100.is_file()
    blob = c10.read_bytes()
    (data / "cut.tar.gz").write_bytes(blob[: len(blob) // 2])
    # Cut-down archives: classes 5.. of CIFAR-10 have no test images, classes 50.. of CIFAR-100 no training images.
    write_cifar_archive(data / "few_test" / "cifar-10-python.tar.gz", "cifar10", train_per_class=4,
                        test_per_class=2, test_classes=range(5))
    write_cifar_archive(data / "few_train" / "cifar-100-python.tar.gz", "cifar100", train_per_class=1,
                        test_per_class=1, train_classes=range(50))
    for split in ("train/cat", "train/dog", "test/cat", "test/dog"):  # class folders, no image
        (data / "empty" / split).mkdir(parents=True)
    (data / "empty" / "train" / "cat" / "notes.txt").write_text("not an image\n")
    write_image_folder(data / "one_class", classes=("cat",), per_class=3, size=32)
    write_image_folder(data / "with_broken", classes=("cat", "dog"), per_class=3, size=32)
    (data / "with_broken" / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (57, 91, 3), dtype=np.uint8)).save(data / "odd_size.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(data / "grey.png")
    (data / "garbage.pdparams").write_bytes(b"\x80\x04not a checkpoint" * 10)
    for name, change in (("wider", dict(embed_dim=48)), ("deeper", dict(depth=3))):
        model = VisionTransformer(ViTConfig(**{**TINY_MODEL, **change}), class_num=100)
        apply_adaptformer(model, AdaptFormerConfig(bottleneck=8))
        paddle.save(model.state_dict(), str(data / f"{name}.pdparams"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad_input")
    data = root / "data"
    data.mkdir()
    config = root / "tiny.yaml"
    config.write_text(TINY_YAML)
    (root / "tiny_typo.yaml").write_text(TINY_YAML.replace("epochs: 1, batch_size", "epoch: 1, batch_size", 1))
    _make_data(data)
    base = root / "earlier"
    proc = run_tool("train", ["--config", str(config), "--data-file", str(data / "cifar-100-python.tar.gz"),
                              "--output", str(base), "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    template = base / PRE
    assert {p.name for p in template.iterdir()} >= {"best.pdparams", "final.pdparams", "run.json", "resume.pdckpt"}
    final = (template / "final.pdparams").read_bytes()
    (data / "truncated.pdparams").write_bytes(final[: len(final) // 2])
    return World(root, data, config, template)


# --- the cases -----------------------------------------------------------------------------

C = ["--config", "{cfg}", "--output", "{out}", "--quiet"]
NO_C100 = ["--data-file", "{data}/absent/cifar-100-python.tar.gz"]  # argument checks come first
NO_C10 = ["--data-file", "{data}/absent/cifar-10-python.tar.gz"]
C100 = ["--data-file", "{data}/cifar-100-python.tar.gz"]
C10 = ["--data-file", "{data}/cifar-10-python.tar.gz"]
TRANSFER_TARGET = "tiny_transfer_cifar10_full"


@dataclass
class Case:
    id: str
    tool: str
    args: list[str]
    expect: tuple[str, ...] = ()  # fragments of the error line: the problem and the fix
    target: str | None = "default"  # the run directory the command would write ("default": by tool)
    check: Callable | None = None  # for inputs that are not errors: checks the successful result

    def run_dir(self) -> str | None:
        if self.target != "default":
            return self.target
        return PRE if self.tool == "train" else TRANSFER_TARGET if self.tool == "transfer" else None


def _trains_without_the_broken_image(proc, out: Path) -> None:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: skipped 1 unreadable image file(s) of 13 in "), \
        proc.stderr
    assert "broken.png" in lines[0] and "goes on without them" in lines[0]
    assert "pretrain: folder, 6 train / 6 test images, 2 classes" in proc.stdout
    assert "final eval: top-1" in proc.stdout
    record = json.loads((out / "tiny_pretrain_folder" / "run.json").read_text())
    assert record["class_names"] == ["cat", "dog"] and len(record["history"]) == 1


def _predicted(name: str) -> Callable:
    def check(proc, out: Path) -> None:
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"loaded {out / PRE / 'best.pdparams'}"), proc.stderr
        (result,) = json.loads(proc.stdout)
        assert result["image"].endswith(name) and len(result["labels"]) == 3
        assert 0.0 < sum(result["scores"]) <= 1.0 + 1e-6
    return check


CASES = [
    # data
    Case("data-file-missing", "train", C + ["--data-file", "{data}/nope/cifar-100-python.tar.gz"],
         ("data file not found: {data}/nope/cifar-100-python.tar.gz", "pass --data-file with the path to "
          "cifar-100-python.tar.gz")),
    Case("archive-truncated", "transfer", C + ["--data-file", "{data}/cut.tar.gz", "--pretrained", "none"],
         ("cannot read {data}/cut.tar.gz: truncated or corrupt", "download cifar-10-python.tar.gz again")),
    Case("cifar10-archive-for-cifar100", "train", C + C10,
         ("is a CIFAR-10 archive but dataset 'cifar100' needs cifar-100-python.tar.gz",
          "pass --data-file with the path to cifar-100-python.tar.gz, or use dataset 'cifar10'")),
    Case("cifar100-archive-for-cifar10", "transfer", C + C100,
         ("is a CIFAR-100 archive but dataset 'cifar10' needs cifar-10-python.tar.gz",
          "or use dataset 'cifar100'")),
    Case("classes-without-test-images", "transfer",
         C + ["--data-file", "{data}/few_test/cifar-10-python.tar.gz", "-o", "transfer.classes=[5,6]"],
         ("the test split of {data}/few_test/cifar-10-python.tar.gz has no images of the selected classes "
          "5 (dog), 6 (frog): nothing to evaluate on", "choose classes that have test images with "
          "-o transfer.classes=[...]")),
    Case("classes-without-training-images", "train",
         C + ["--data-file", "{data}/few_train/cifar-100-python.tar.gz", "-o", "pretrain.classes=[50,51]"],
         ("the train split of {data}/few_train/cifar-100-python.tar.gz has no images of the selected classes "
          "50 (mouse), 51 (mushroom): nothing to train on",
          "choose classes that have train images with -o pretrain.classes=[...]")),
    Case("folder-without-images", "train", C + ["--data-dir", "{data}/empty"],
         ("no images in {data}/empty", "expected .bmp, .jpeg, .jpg, .png, .webp files in DIR/train/<class>/*"),
         target="tiny_pretrain_folder"),
    Case("folder-with-one-class", "train", C + ["--data-dir", "{data}/one_class"],
         ("has 1 class folder(s) in train, a classifier needs at least 2", "add DIR/train/<class>/ folders"),
         target="tiny_pretrain_folder"),
    Case("folder-with-an-unreadable-image", "train", C + ["--data-dir", "{data}/with_broken"],
         target="tiny_pretrain_folder", check=_trains_without_the_broken_image),
    # pretrained checkpoint
    Case("pretrained-missing", "transfer", C + C10 + ["--pretrained", "{data}/none.pdparams"],
         ("pretrained checkpoint not found: {data}/none.pdparams", "pass --pretrained PATH, or --pretrained none")),
    Case("pretrained-truncated", "transfer", C + C10 + ["--pretrained", "{data}/truncated.pdparams"],
         ("checkpoint {data}/truncated.pdparams", "cannot be read: it is truncated, corrupt or not a Paddle file",
          "pass an intact .pdparams")),
    Case("pretrained-garbage", "transfer", C + C10 + ["--pretrained", "{data}/garbage.pdparams"],
         ("checkpoint {data}/garbage.pdparams (180 bytes) cannot be read", "pass an intact .pdparams")),
    Case("pretrained-other-width", "transfer", C + C10 + ["--pretrained", "{data}/wider.pdparams"],
         ("checkpoint does not fit the model: 34 shape mismatches (pos_embed: checkpoint [1, 17, 48] vs model "
          "[1, 17, 32], cls_token", "compare embed_dim/width, depth and patch_size")),
    Case("pretrained-other-depth", "transfer", C + C10 + ["--pretrained", "{data}/deeper.pdparams"],
         ("15 unexpected keys (blocks.2.norm1.weight, blocks.2.norm1.bias", "compare embed_dim/width, depth")),
    # method, backbone, config keys
    Case("unknown-method", "transfer", C + NO_C10 + ["--method", "lorra"],
         ("unknown method 'lorra'", "did you mean 'lora'?")),
    Case("unknown-backbone", "transfer", C + NO_C10 + ["--backbone", "ViT_huge"],
         ("unknown backbone 'ViT_huge'", "choose one of ViT_base_patch16_224")),
    Case("config-key-mistyped-with-section", "train", C + NO_C100 + ["-o", "pretrain.epoch=3"],
         ("-o: unknown config key 'epoch' in section 'pretrain'", "did you mean 'epochs'?")),
    Case("config-key-mistyped-bare", "train", C + NO_C100 + ["-o", "btach_size=8"],
         ("-o: unknown config key 'btach_size'", "did you mean 'pretrain.batch_size'?")),
    Case("config-key-mistyped-in-file", "train", ["--config", "{root}/tiny_typo.yaml", "--output", "{out}"] + NO_C100,
         ("{root}/tiny_typo.yaml: unknown config key 'epoch' in section 'pretrain'", "did you mean 'epochs'?"),
         target=None),
    Case("config-value-not-a-number", "train", C + NO_C100 + ["-o", "epochs=ten"],
         ("pretrain.epochs must be int, got 'ten'", "give a whole number")),
    Case("flag-value-not-a-number", "train", C + NO_C100 + ["--epochs", "ten"],
         ("argument --epochs: invalid int value: 'ten'", "see train.py --help")),
    Case("dataset-choice-unknown", "train", C + NO_C100 + ["--pretrain", "imagenet"],
         ("invalid choice: 'imagenet'", "choose from", "see train.py --help")),
    # numbers out of range, by flag and by -o, in both tools
    Case("epochs-zero-flag", "train", C + NO_C100 + ["--epochs", "0"],
         ("pretrain.epochs must be positive, got 0", "--epochs N or -o pretrain.epochs=N")),
    Case("epochs-negative-flag", "transfer", C + NO_C10 + ["--epochs", "-3"],
         ("transfer.epochs must be positive, got -3", "--epochs N or -o transfer.epochs=N")),
    Case("epochs-zero-o", "train", C + NO_C100 + ["-o", "epochs=0"], ("pretrain.epochs must be positive, got 0",)),
    Case("batch-size-zero-flag", "train", C + NO_C100 + ["--batch-size", "0"],
         ("pretrain.batch_size must be positive, got 0", "--batch-size N or -o pretrain.batch_size=N")),
    Case("batch-size-negative-o", "transfer", C + NO_C10 + ["-o", "transfer.batch_size=-4"],
         ("transfer.batch_size must be positive, got -4", ">= 1")),
    Case("lr-zero-flag", "train", C + NO_C100 + ["--lr", "0"],
         ("pretrain.lr must be positive, got 0.0", "--lr 0.01 or -o pretrain.lr=0.01")),
    Case("lr-negative-flag", "transfer", C + NO_C10 + ["--lr", "-0.1"], ("transfer.lr must be positive, got -0.1",)),
    Case("lr-zero-o", "train", C + NO_C100 + ["-o", "lr=0"], ("pretrain.lr must be positive, got 0.0",)),
    # the output folder
    Case("output-not-writable", "train", ["--config", "{cfg}", "--output", "{out}/a_file/sub"] + C100,
         ("cannot write to the output directory {out}/a_file/sub/tiny_pretrain_cifar100: Not a directory",
          "pass --output DIR with a directory you can write to"), target=None),
    Case("export-output-not-writable", "export", ["--checkpoint", "{out}/" + PRE, "--output", "{out}/a_file/sub"],
         ("cannot write to the output directory {out}/a_file/sub: Not a directory", "pass --output DIR")),
    # corrupt checkpoints to predict / export / --resume
    Case("predict-garbage-pdparams", "predict", ["--checkpoint", "{out}/broken_run/final.pdparams",
                                                 "{data}/odd_size.jpg"],
         ("checkpoint {out}/broken_run/final.pdparams (180 bytes) cannot be read", "pass an intact .pdparams")),
    Case("predict-truncated-best", "predict", ["--checkpoint", "{out}/broken_run", "{data}/odd_size.jpg"],
         ("checkpoint {out}/broken_run/best.pdparams", "truncated", "pass an intact .pdparams")),
    Case("export-garbage-pdparams", "export", ["--checkpoint", "{out}/broken_run", "--weights", "final",
                                               "--output", "{out}/export"],
         ("checkpoint {out}/broken_run/final.pdparams (180 bytes) cannot be read", "pass an intact .pdparams")),
    Case("resume-garbage", "train", C + C100 + ["--resume", "{out}/broken_run"],
         ("resume checkpoint {out}/broken_run/resume.pdckpt cannot be read",
          "start the run again without --resume")),
    Case("resume-a-weights-file", "train", C + C100 + ["--resume", "{out}/" + PRE + "/final.pdparams"],
         ("final.pdparams is not a resumable checkpoint", "pass the run directory or its resume.pdckpt")),
    Case("resume-nothing-to-resume", "transfer", C + C10 + ["--resume"],
         ("nothing to resume: {out}/tiny_transfer_cifar10_full/resume.pdckpt does not exist",
          "start without --resume"), target=None),
    Case("resume-folder-without-checkpoint", "train", C + C100 + ["--resume", "{out}/export"],
         ("nothing to resume: {out}/export/resume.pdckpt does not exist", "pass a run directory that has a "
          "resume.pdckpt")),
    Case("resume-with-the-other-tool", "transfer", C + C10 + ["--resume", "{out}/" + PRE],
         ("is a pretrain checkpoint", "resume it with train.py")),
    # images to predict.py
    Case("predict-odd-size-image", "predict", ["--checkpoint", "{out}/" + PRE, "--json", "--topk", "3",
                                               "{data}/odd_size.jpg"], check=_predicted("odd_size.jpg")),
    Case("predict-grey-image", "predict", ["--checkpoint", "{out}/" + PRE, "--json", "--topk", "3",
                                           "{data}/grey.png"], check=_predicted("grey.png")),
    Case("predict-only-unreadable-images", "predict", ["--checkpoint", "{out}/" + PRE, "{data}/broken.png"],
         ("none of the 1 image file(s) could be read as an image ({data}/broken.png)", "pass image files")),
]


# --- running a case ------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def prepare(world: World, case: Case, out: Path) -> None:
    """The output folder as an earlier session left it."""
    for name in {PRE, case.run_dir()} - {None}:
        shutil.copytree(world.template, out / name)
    broken = out / "broken_run"
    shutil.copytree(world.template, broken)
    (broken / "final.pdparams").write_bytes((world.data / "garbage.pdparams").read_bytes())
    (broken / "best.pdparams").write_bytes((world.data / "truncated.pdparams").read_bytes())
    (broken / "resume.pdckpt").write_bytes(b"\x80\x04garbage" * 50)
    (out / "export").mkdir()
    (out / "export" / "inference.yml").write_text("# an earlier export\n")
    (out / "a_file").write_text("a regular file, not a folder\n")


def play(world: World, case: Case) -> tuple:
    out = world.root / "cases" / case.id / "out"
    out.mkdir(parents=True)
    prepare(world, case, out)
    before = snapshot(out)
    names = {"data": world.data, "out": out, "cfg": world.config, "root": world.root}
    proc = run_tool(case.tool, [arg.format(**names) for arg in case.args])
    return proc, out, before, snapshot(out)


@pytest.fixture(scope="module")
def outcomes(world, request):
    """Every selected case started at once on a small pool; each test waits for its own."""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params}
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        yield {case.id: pool.submit(play, world, case) for case in CASES if case.id in wanted}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, outcomes, world):
    proc, out, before, after = outcomes[case.id].result()
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    if case.check is not None:  # not an error: it must work
        assert proc.returncode == 0, proc.stderr[-3000:]
        case.check(proc, out)
        written = case.run_dir()
        before = {k: v for k, v in before.items() if k.split(os.sep)[0] != written}
        after = {k: v for k, v in after.items() if k.split(os.sep)[0] != written}
        assert after == before, "files outside the run's own directory changed"
        return
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    names = {"data": world.data, "out": out, "cfg": world.config, "root": world.root}
    for fragment in case.expect:
        assert fragment.format(**names) in lines[0], lines[0]
    changed = sorted(k for k in set(before) | set(after) if before.get(k, b"?") != after.get(k, b"?"))
    assert not changed, f"the failed command changed {changed} in {out}"
