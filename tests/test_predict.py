"""predict.py and ppadapt.Predictor on real (tiny) training runs: the rebuilt model, the
run's preprocessing, any image format, batching, and one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ppadapt
from cifar_archive import CIFAR10_NAMES, write_cifar_archive
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.errors import CheckpointError, DataError
from ppadapt.apps.predict import Predictor, expand_images, predict_main

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.patch_size=8", "adapter.bottleneck=4",
        "warmup_steps=1", "batch_size=32", "lr=0.2"]
TRANSFER_CLASSES = list(CIFAR10_NAMES[5:])  # configs/cpu.yaml transfers to classes 5..9


def tiny_run(out: Path, archive: Path, stage: str = "transfer", *extra: str) -> Path:
    """A real run of configs/cpu.yaml shrunk to seconds (in-process); returns its directory."""
    from ppadapt.training.engine import run_stage

    cfg = load_config(CONFIG_DIR / "cpu.yaml", TINY + [f"{stage}.data_file={archive}", "epochs=3", *extra],
                      stage=stage)
    if stage == "transfer":
        cfg.transfer.pretrained = "none"
    cfg.output = str(out)
    return run_stage(cfg, stage, log=lambda line: None, verbose=0).run_dir


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    return subprocess.run([sys.executable, str(REPO / "ppadapt" / "predict.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr
    assert lines and lines[-1].startswith("error: ") and sum(ln.startswith("error: ") for ln in lines) == 1, stderr
    return lines[-1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    archive = write_cifar_archive(root / "cifar-10-python.tar.gz", "cifar10", train_per_class=12, test_per_class=4)
    frozen = tiny_run(root / "out", archive, "transfer", "transfer.freeze=true")
    pretrain = tiny_run(root / "out", archive, "pretrain")

    from ppadapt.data import build_datasets
    test = build_datasets("cifar10", role="transfer", img_size=32, data_file=archive, classes=[5, 6, 7, 8, 9],
                          augment=False).test
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(4):  # one per class, the last in a subfolder
        where = images / "sub" if i == 3 else images
        Image.fromarray(test.images[i]).save(where / f"{TRANSFER_CLASSES[test.labels[i]]}_{i}.png")
    (images / "notes.txt").write_text("not an image, ignored in a folder")
    odd = root / "odd"
    odd.mkdir()
    base = Image.fromarray(test.images[0])
    base.convert("L").save(odd / "grey.png")
    base.convert("RGBA").save(odd / "rgba.png")
    base.convert("P").save(odd / "palette.png")
    base.resize((57, 41)).save(odd / "wide.jpg")
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"frozen": frozen, "pretrain": pretrain, "images": images, "odd": odd, "broken": broken,
            "test": test, "root": root}


# --- the rebuilt model ---------------------------------------------------------------------------

def test_predictor_reproduces_the_runs_own_evaluation(setup):
    """Top-1 of the Predictor on the run's test split = the eval accuracy run.json recorded for best.pdparams:
    same architecture and method, same weights, same preprocessing."""
    test = setup["test"]
    record = json.loads((setup["frozen"] / "run.json").read_text())
    predictor = Predictor(setup["frozen"], topk=2, batch_size=7)
    assert predictor.class_names == record["class_names"] == TRANSFER_CLASSES
    assert predictor.run.method == "adaptformer" and predictor.run.weights.name == "best.pdparams"
    assert not predictor.model.training
    results = predictor(list(test.images))
    top1 = np.array([TRANSFER_CLASSES.index(r["labels"][0]) for r in results])
    assert np.mean(top1 == test.labels) == pytest.approx(record["best"]["acc_top1"], abs=1e-6)
    assert all(len(r["labels"]) == 2 and r["scores"][0] >= r["scores"][1] for r in results)


def test_probabilities_equal_the_model_on_the_eval_transform(setup):
    import paddle
    import paddle.nn.functional as F

    test = setup["test"]
    predictor = Predictor(setup["frozen"] / "final.pdparams")
    assert predictor.run.weights.name == "final.pdparams"
    batch = np.stack([test[i][0] for i in range(6)])  # the run's eval pipeline
    with paddle.no_grad():
        expected = F.softmax(predictor.model(paddle.to_tensor(batch)), axis=-1).numpy()
    got = predictor.probabilities(list(test.images[:6]))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_pretraining_run_and_topk_capped_at_the_class_count(setup):
    predictor = Predictor(setup["pretrain"], topk=50)
    assert predictor.run.stage == "pretrain" and predictor.class_names == list(CIFAR10_NAMES[:5])
    result = predictor(setup["test"].images[0])
    assert set(result) == {"labels", "scores"} and len(result["labels"]) == 5
    assert sorted(result["labels"]) == sorted(CIFAR10_NAMES[:5])
    assert result["scores"] == sorted(result["scores"], reverse=True)
    assert sum(result["scores"]) == pytest.approx(1.0, abs=1e-5)


def test_any_input_form_gives_the_same_answer(setup):
    predictor = Predictor(setup["frozen"], topk=3)
    path = next(setup["images"].glob("*.png"))
    array = np.asarray(Image.open(path).convert("RGB"))
    expected = predictor(str(path))
    for same in (path, Image.open(path), array, array.copy()[None][0]):
        got = predictor(same)
        assert got["labels"] == expected["labels"]
        np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-6)
    batch = predictor(np.stack([array, array]))  # N x H x W x C: a batch
    assert isinstance(batch, list) and len(batch) == 2 and batch[1]["labels"] == expected["labels"]
    assert predictor([]) == []
    grey = predictor(array[:, :, 0])  # H x W: grey, converted
    assert len(grey["labels"]) == 3
    with pytest.raises(DataError, match="uint8"):
        predictor(array.astype("float32"))
    with pytest.raises(TypeError, match="path, a PIL image or a numpy array"):
        predictor(42)
    with pytest.raises(DataError, match="cannot read image"):
        predictor(setup["broken"])


def test_checkpoint_problems_are_one_line_errors(setup, tmp_path):
    run = setup["frozen"]
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Predictor(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no run.json"):
        Predictor(tmp_path)
    alone = tmp_path / "best.pdparams"
    alone.write_bytes((run / "best.pdparams").read_bytes())
    with pytest.raises(CheckpointError, match="no run.json next to"):
        Predictor(alone)
    for adapter in (run / "adapter", run / "adapter" / "adapter_model.safetensors"):
        with pytest.raises(CheckpointError, match="adapter-only checkpoint"):
            Predictor(adapter)
    # a run.json whose config no longer fits the weights: strict loading names the keys
    other = tmp_path / "other"
    other.mkdir()
    (other / "best.pdparams").write_bytes((run / "best.pdparams").read_bytes())
    record = json.loads((run / "run.json").read_text())
    record["config"]["model"]["carry"]["adaptformer"]["bottleneck"] = 8
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="shape mismatches.*adaptmlp"):
        Predictor(other)


# --- the command line ----------------------------------------------------------------------------

def test_expand_images_files_folders_globs(setup):
    images, odd = setup["images"], setup["odd"]
    found = expand_images([str(images)])
    assert len(found) == 4 and found[-1].parent.name == "sub"  # recursive, sorted, .txt ignored
    assert expand_images([str(odd / "*.png")]) == sorted(odd.glob("*.png"))
    assert [p.name for p in expand_images([str(images / "*")])] == [p.name for p in found]  # no notes.txt
    assert len(expand_images([str(images), str(found[0])])) == 4  # each file once
    with pytest.raises(DataError, match="image not found"):
        expand_images([str(images / "missing.png")])
    with pytest.raises(DataError, match="no image file matches"):
        expand_images([str(images / "*.gif")])
    empty = setup["root"] / "empty"
    empty.mkdir(exist_ok=True)
    with pytest.raises(DataError, match="no images"):
        expand_images([str(empty)])


def test_cli_human_readable_with_class_names(setup):
    proc = run_cli("--checkpoint", setup["frozen"], setup["images"], "--topk", 9, "--batch-size", 3)
    assert proc.returncode == 0, proc.stderr
    assert "method adaptformer" in proc.stderr and "Traceback" not in proc.stderr
    blocks = proc.stdout.strip().split("\n" + str(setup["images"]))
    assert len(blocks) == 4
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 * 6  # path + 5 labels (top-9 capped at 5 classes)
    assert {ln.split()[1] for ln in lines if ln.startswith("  ")} == set(TRANSFER_CLASSES)
    assert lines[1].startswith("  1. ") and float(lines[1].split()[-1]) >= float(lines[2].split()[-1])


def test_cli_json_odd_images_and_the_python_api_agree(setup):
    odd = setup["odd"]
    proc = run_cli("--checkpoint", setup["frozen"], "--json", "--topk", 3, odd / "*.png", odd / "wide.jpg",
                   setup["broken"])
    assert proc.returncode == 0, proc.stderr
    assert "warning: skipped 1 unreadable image file(s) of 5" in proc.stderr and "broken.png" in proc.stderr
    results = json.loads(proc.stdout)
    names = [Path(r["image"]).name for r in results]
    assert names == ["grey.png", "palette.png", "rgba.png", "wide.jpg"]  # converted/resized, not rejected
    predictor = Predictor(setup["frozen"], topk=3)
    for r in results:
        assert set(r) == {"image", "labels", "scores"} and len(r["labels"]) == 3
        assert set(r["labels"]) <= set(TRANSFER_CLASSES) and 0.0 < sum(r["scores"]) <= 1.0 + 1e-6
        api = predictor(r["image"])
        assert api["labels"][0] == r["labels"][0]
        np.testing.assert_allclose(api["scores"], r["scores"], atol=1e-6)
    rgba = next(r for r in results if r["image"].endswith("rgba.png"))
    assert rgba["labels"] == predictor(setup["test"].images[0])["labels"]  # alpha dropped, same pixels


def test_cli_errors_exit_2_with_one_line(setup, tmp_path, capsys):
    proc = run_cli("--checkpoint", tmp_path / "nope", setup["images"])
    assert proc.returncode == 2 and "checkpoint not found" in one_error_line(proc.stderr)
    cases = [
        (["--checkpoint", str(tmp_path), str(setup["images"])], "no run.json"),
        (["--checkpoint", str(setup["frozen"]), str(tmp_path / "*.jpg")], "no image file matches"),
        (["--checkpoint", str(setup["frozen"]), str(tmp_path / "missing.png")], "image not found"),
        (["--checkpoint", str(setup["frozen"]), str(setup["broken"])], "none of the 1 image file(s) could be read"),
        (["--checkpoint", str(setup["frozen"]), "--topk", "0", str(setup["images"])], "--topk must be at least 1"),
        (["--checkpoint", str(setup["frozen"] / "best.pdparams"), "--weights", "final", str(setup["images"])],
         "applies to a run directory"),
    ]
    for argv, fragment in cases:
        assert predict_main(argv) == 2
        err = capsys.readouterr().err
        assert fragment in one_error_line(err), err


def test_predictor_is_exported():
    assert ppadapt.Predictor is Predictor


def test_predict_and_export_do_not_import_the_training_stack(setup, tmp_path):
    """Prediction and export need the model and its run folder, not the trainer: in a fresh
    process, importing both apps, predicting (API and command line) and exporting leave no
    ``ppadapt.training`` module loaded."""
    image = next(setup["images"].glob("*.png"))
    script = f"""
import sys
import ppadapt.apps.predict, ppadapt.apps.export
from ppadapt.apps.predict import Predictor, predict_main
from ppadapt.apps.export import export_model
assert "labels" in Predictor({str(setup["frozen"])!r})({str(image)!r})
assert predict_main(["--checkpoint", {str(setup["frozen"])!r}, {str(image)!r}, "--json"]) == 0
export_model({str(setup["frozen"])!r}, {str(tmp_path / "export")!r}, log=lambda line: None)
print("training modules:", sorted(m for m in sys.modules if m.startswith("ppadapt.training")))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "training modules: []", proc.stdout[-2000:]
    assert (tmp_path / "export" / "inference.pdiparams").is_file()
