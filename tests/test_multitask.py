"""Many tasks on one frozen backbone (issue 13): every method's adapter from a tiny real digits
run, served side by side on one backbone loaded once, gives its own single-model Predictor's
logits, in mixed batches and after switching back and forth; evaluation reproduces each run's
final top-1; export writes a checked inference model per task; bad input is one line."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

import ppadapt
from ppadapt.apps.evaluate import evaluate_main, evaluate_tasks
from ppadapt.apps.export import export_main, export_tasks, run_inference
from ppadapt.apps.multitask import MultiTaskModel, MultiTaskPredictor, read_task_file
from ppadapt.apps.predict import Predictor, predict_main
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.data.digits import load_digits_splits
from ppadapt.errors import CheckpointError, ConfigError, DataError, PPAdaptWarning
from ppadapt.runs.backbone import load_backbone
from ppadapt.runs.tasks import find_adapter

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.carry.adaptformer.bottleneck=8",
        "batch_size=64", "warmup_steps=1", "optimizer=adamw", "weight_decay=0.0"]
# Every method that writes an adapter file; AdaptFormer here is the branches the backbone carries.
METHODS = {"adaptformer": ["transfer.freeze=true"], "lora": ["method.name=lora", "method.rank=2"],
           "bitfit": ["method.name=bitfit"], "ssf": ["method.name=ssf"],
           "vpt-deep": ["method.name=vpt-deep", "method.tokens=2"],
           "vpt-shallow": ["method.name=vpt-shallow", "method.tokens=2"], "linear": ["method.name=linear"],
           "adapter": ["method.name=adapter", "method.bottleneck=4"]}
OTHER_GEOMETRY = {"width": ["model.embed_dim=16"], "depth": ["model.depth=1"], "patch": ["model.patch_size=8"]}


def run(out: Path, stage: str, *extra: str) -> Path:
    from ppadapt.training.engine import run_stage

    cfg = load_config(CONFIG_DIR / "digits.yaml", TINY + list(extra), stage=stage)
    cfg.output = str(out)
    return run_stage(cfg, stage, log=lambda line: None, verbose=0).run_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny digits backbone (carrying AdaptFormer branches) with one transfer per method, a
    plain backbone with an AdaptFormer transfer on top, adapters of other geometries, images."""
    root = tmp_path_factory.mktemp("multitask")
    backbone = run(root / "out", "pretrain", "epochs=6", "lr=0.003")
    runs = {name: run(root / "out", "transfer", "epochs=3", "lr=0.01",
                      f"transfer.pretrained={backbone / 'final.pdparams'}", *extra)
            for name, extra in METHODS.items()}
    plain = run(root / "plain", "pretrain", "epochs=1", "lr=0.003", "model.carry={}")
    plain_adaptformer = run(root / "plain", "transfer", "epochs=2", "lr=0.01", "model.carry={}",
                            f"transfer.pretrained={plain / 'final.pdparams'}", "method.name=adaptformer",
                            "method.bottleneck=4")
    other = {what: run(root / what, "transfer", "epochs=1", "transfer.pretrained=none", "method.name=lora", *extra)
             for what, extra in OTHER_GEOMETRY.items()}
    splits = load_digits_splits("transfer")
    images = root / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(splits.test_images[i]).save(images / f"digit{i}.png")
    return {"root": root, "backbone": backbone, "runs": runs, "plain": plain, "plain_adaptformer": plain_adaptformer,
            "other": other, "arrays": list(splits.test_images[:10]), "images": images}


@pytest.fixture(scope="module")
def served(world):
    """Every method's task on the one backbone."""
    return MultiTaskPredictor(world["backbone"], {name: find_adapter(d) for name, d in world["runs"].items()},
                              topk=3, batch_size=4)


def single_logits(run_dir: Path, images) -> np.ndarray:
    """The task's own full model, as predict.py --checkpoint RUN --weights final serves it."""
    single = Predictor(run_dir, weights="final")
    with paddle.no_grad():
        return single.model(paddle.to_tensor(np.stack([single.preprocess(im) for im in images]))).numpy()


# --- logits -------------------------------------------------------------------------------------------

def test_every_methods_task_gives_its_own_models_logits_and_switching_leaks_nothing(world, served):
    images = world["arrays"]
    expected = {name: single_logits(d, images) for name, d in world["runs"].items()}
    first = {}
    for name in METHODS:  # in turn: each switch takes the previous task off
        first[name] = np.stack(served.logits(images, task=name))
        np.testing.assert_allclose(first[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    for name in [*reversed(METHODS), *METHODS, "bitfit", "ssf", "bitfit", "adaptformer", "ssf", "bitfit"]:
        again = np.stack(served.logits(images, task=name))
        assert np.array_equal(again, first[name]), name  # A, B, A: bit for bit
    served.model.deactivate()


def test_a_mixed_batch_is_grouped_per_task_and_returned_in_input_order(world, served):
    images = world["arrays"]
    names = list(METHODS)
    tasks = [names[(3 * i + 1) % len(names)] for i in range(len(images))]
    expected = {name: single_logits(world["runs"][name], images) for name in set(tasks)}
    got = served.logits(images, tasks=tasks)
    for i, (task, row) in enumerate(zip(tasks, got)):
        np.testing.assert_allclose(row, expected[task][i], rtol=0, atol=1e-6, err_msg=f"image {i} ({task})")
    results = served(images, tasks=tasks)
    probabilities = served.probabilities(images, tasks=tasks)
    for task, result, p in zip(tasks, results, probabilities):
        assert set(result) == {"labels", "scores"} and len(result["labels"]) == 3  # Predictor's form, topk 3
        assert result["labels"][0] == served.class_names(task)[int(np.argmax(p))]
        assert result["scores"] == sorted(result["scores"], reverse=True)
    one = served(images[0], task="lora")
    single = Predictor(world["runs"]["lora"], topk=3, weights="final")(images[0])
    assert one["labels"] == single["labels"]
    np.testing.assert_allclose(one["scores"], single["scores"], atol=1e-6)


def test_the_backbone_exists_once_and_bitfit_and_ssf_restore_it_exactly(world):
    backbone = load_backbone(world["backbone"])
    model = MultiTaskModel(backbone)
    pristine = {k: v.numpy().copy() for k, v in backbone.model.state_dict().items()}
    params = {k: id(v) for k, v in backbone.model.state_dict().items()}
    for name in ("bitfit", "ssf", "adaptformer", "lora"):
        model.add_task(name, world["runs"][name])
    batch = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")
    for name in ("bitfit", "ssf", "bitfit", "adaptformer", "lora", "bitfit"):
        model.logits(batch, name)
        if name == "bitfit":  # BitFit's biases are in the backbone tensors while it is active
            assert not np.array_equal(backbone.model.state_dict()["blocks.0.mlp.fc1.bias"].numpy(),
                                      pristine["blocks.0.mlp.fc1.bias"])
    model.deactivate()
    now = backbone.model.state_dict()
    assert set(now) == set(pristine) and {k: id(v) for k, v in now.items()} == params  # the same tensors
    for key, value in pristine.items():
        assert np.array_equal(now[key].numpy(), value), key
    sizes = model.nbytes()
    assert sizes["backbone"] == sum(v.nbytes for v in pristine.values())
    bitfit, adaptformer = model.tasks["bitfit"], model.tasks["adaptformer"]
    assert set(bitfit.overrides) and all(k.endswith(".bias") for k in bitfit.overrides)  # exactly what it trained
    assert set(model._pristine) == set(bitfit.overrides) | set(adaptformer.overrides)
    assert sizes["tasks"] + sizes["pristine"] < sizes["backbone"]
    model.remove_task("bitfit")
    assert set(model._pristine) == set(adaptformer.overrides)  # the copies no task needs are freed


def test_tasks_are_added_and_removed_at_run_time(world):
    predictor = MultiTaskPredictor(world["backbone"], [("lora", world["runs"]["lora"])])
    assert predictor.tasks == ["lora"] and predictor(world["arrays"][0])["labels"]  # one task: no name needed
    predictor.add_task("ssf", world["runs"]["ssf"])
    with pytest.raises(ConfigError, match="name the task"):
        predictor(world["arrays"][0])
    before = predictor.logits(world["arrays"][:2], task="ssf")
    predictor.remove_task("lora")
    with pytest.raises(ConfigError, match=r"unknown task 'lora' \(tasks: ssf\)"):
        predictor(world["arrays"][0], task="lora")
    predictor.add_task("lora", world["runs"]["lora"] / "adapter")
    assert predictor.tasks == ["ssf", "lora"]
    assert all(np.array_equal(a, b) for a, b in zip(before, predictor.logits(world["arrays"][:2], task="ssf")))


def test_a_backbone_file_and_a_warning_for_another_pretrained_file(world, recwarn):
    predictor = MultiTaskPredictor(world["backbone"] / "final.pdparams", {"lora": world["runs"]["lora"]})
    assert predictor.backbone.weights.name == "final.pdparams" and not recwarn.list
    with pytest.warns(PPAdaptWarning, match="task 'lora' was trained from .*final.pdparams, not from the "
                                            "backbone's .*best.pdparams"):
        MultiTaskPredictor(world["backbone"], {"lora": world["runs"]["lora"]}, weights="best")


def test_adaptformer_as_a_method_on_a_plain_backbone(world):
    predictor = MultiTaskPredictor(world["plain"], {"af": world["plain_adaptformer"]})
    np.testing.assert_allclose(np.stack(predictor.logits(world["arrays"], task="af")),
                               single_logits(world["plain_adaptformer"], world["arrays"]), rtol=0, atol=1e-6)
    assert predictor.model.tasks["af"].detached.modules  # its own branches, off the model while inactive


# --- evaluation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixed", [False, True])
def test_evaluation_reproduces_each_runs_final_top1(world, served, mixed):
    scores = evaluate_tasks(served.model, batch_size=16, mixed=mixed)
    assert [s.task for s in scores] == list(METHODS)
    for score in scores:
        record = json.loads((world["runs"][score.task] / "run.json").read_text())
        assert score.images == 180 and score.dataset == "digits"
        assert score.acc_top1 == pytest.approx(record["final"]["acc_top1"], abs=1e-6) and score.matches
    assert len({s.acc_top1 for s in scores}) > 2  # the tasks differ: a real check, not chance level everywhere


def test_evaluate_cli(world, capsys):
    args = ["--backbone", str(world["backbone"]), "--adapter", f"lora={world['runs']['lora']}",
            "--adapter", f"bitfit={world['runs']['bitfit']}", "--json", "--task", "bitfit"]
    assert evaluate_main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == ["bitfit"] and rows[0]["matches"] is True


# --- export ---------------------------------------------------------------------------------------------

def test_export_writes_a_checked_inference_model_per_task(world, served, tmp_path):
    names = ["lora", "ssf", "bitfit", "adaptformer", "vpt-deep"]
    results = export_tasks(served.model, tmp_path, names=names, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    batch = np.stack([served.model.task("lora").transform(np.asarray(im)) for im in world["arrays"][:3]])
    for name, result in results.items():
        assert result.output == tmp_path / name and result.max_abs_diff < 1e-5
        assert result.merged == ([name] if name in ("lora", "ssf") else [])
        config = paddle.inference.Config(str(result.model_file), str(result.params_file))
        config.disable_glog_info()
        got = run_inference(paddle.inference.create_predictor(config), batch)
        np.testing.assert_allclose(got, single_logits(world["runs"][name], world["arrays"][:3]), atol=1e-5)
        meta = (result.meta_file).read_text()
        assert f"task: {name}" in meta and "class_names: ['5', '6', '7', '8', '9']" in meta


def test_export_cli(world, tmp_path, capsys):
    args = ["--backbone", str(world["backbone"]), "--adapter", f"lin={world['runs']['linear']}",
            "--output", str(tmp_path)]
    assert export_main(args) == 0
    assert "exported to" in capsys.readouterr().out and (tmp_path / "lin" / "inference.pdiparams").is_file()


# --- command line ---------------------------------------------------------------------------------------

def adapters(world, *names):
    return [a for name in names for a in ("--adapter", f"{name}={world['runs'][name]}")]


def test_predict_cli_one_task_and_a_task_file(world, capsys, tmp_path):
    images = sorted(world["images"].glob("*.png"))
    base = ["--backbone", str(world["backbone"]), *adapters(world, "lora", "bitfit", "ssf")]
    assert predict_main(base + ["--task", "ssf", "--json", "--topk", "2", str(world["images"])]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert "task ssf: ssf adapter" in captured.err
    assert [Path(r["image"]).name for r in rows] == [p.name for p in images]
    assert all(set(r) == {"image", "task", "labels", "scores"} and r["task"] == "ssf" for r in rows)

    tasks = ["lora", "bitfit", "ssf", "bitfit", "lora", "ssf"]
    task_file = tmp_path / "tasks.csv"
    task_file.write_text("# image,task\n" + "".join(f"{p},{t}\n" for p, t in zip(images, tasks)) + "\n")
    assert predict_main(base + ["--task-file", str(task_file), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(Path(r["image"]).name, r["task"]) for r in rows] == [(p.name, t) for p, t in zip(images, tasks)]
    predictor = MultiTaskPredictor(world["backbone"], {n: world["runs"][n] for n in ("lora", "bitfit", "ssf")})
    for row, expected in zip(rows, predictor([str(p) for p in images], tasks=tasks)):
        assert row["labels"] == expected["labels"]
        np.testing.assert_allclose(row["scores"], expected["scores"], atol=1e-6)

    assert predict_main(base + ["--task", "lora", str(images[0])]) == 0  # the human-readable form
    out = capsys.readouterr().out
    assert out.startswith(f"{images[0]}  [task lora]\n  1. ")


def test_predict_cli_keeps_the_single_run_form(world, capsys):
    image = next(world["images"].glob("*.png"))
    assert predict_main(["--checkpoint", str(world["runs"]["lora"]), "--json", str(image)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows[0]) == {"image", "labels", "scores"}


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    assert sum(ln.startswith("error: ") for ln in lines) == 1, err
    return lines[-1]


# --- bad input --------------------------------------------------------------------------------------------

def test_an_adapter_for_another_backbone_says_what_differs(world):
    predictor = MultiTaskPredictor(world["backbone"])
    expected = {"width": "width 16 (the backbone: 32)", "depth": "depth 1 (the backbone: 2)",
                "patch": "patch 8 (the backbone: 4)"}
    for what, run_dir in world["other"].items():
        with pytest.raises(CheckpointError, match="was made for another backbone") as info:
            predictor.add_task(what, run_dir)
        assert expected[what] in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="trained on a backbone carrying AdaptFormer branches; this backbone "
                                              "carries nothing"):
        MultiTaskPredictor(world["plain"], {"lora": world["runs"]["lora"]})
    with pytest.raises(CheckpointError, match="trained on a backbone carrying nothing; this backbone carries "
                                              "AdaptFormer branches"):
        predictor.add_task("af", world["plain_adaptformer"])
    assert predictor.tasks == [] and not ppadapt.methods.applied_methods(predictor.model.model).keys() - {"adaptformer"}


def test_two_tasks_with_one_name_and_unknown_tasks(world, tmp_path):
    lora = world["runs"]["lora"]
    with pytest.raises(ConfigError, match="two tasks named 'a'"):
        MultiTaskPredictor(world["backbone"], [("a", lora), ("a", world["runs"]["ssf"])])
    predictor = MultiTaskPredictor(world["backbone"], {"a": lora, "b": world["runs"]["ssf"]})
    with pytest.raises(ConfigError, match="two tasks named 'a'"):
        predictor.add_task("a", world["runs"]["bitfit"])
    with pytest.raises(ConfigError, match=r"unknown task 'c' \(tasks: a, b\)"):
        predictor(world["arrays"][:2], task="c")
    with pytest.raises(ConfigError, match=r"unknown task 'c' \(tasks: a, b\)"):
        predictor(world["arrays"][:2], tasks=["a", "c"])
    with pytest.raises(ConfigError, match="names 1 task"):
        predictor(world["arrays"][:2], tasks=["a"])
    with pytest.raises(ConfigError, match="bad task name"):
        predictor.add_task("x,y", lora)
    task_file = tmp_path / "t.csv"
    task_file.write_text(f"{next(world['images'].glob('*.png'))},a\n\n{tmp_path},zzz\n")
    with pytest.raises(ConfigError, match=r"t.csv line 3: unknown task 'zzz' \(tasks: a, b\)"):
        read_task_file(task_file, ["a", "b"])
    task_file.write_text("no comma here\n")
    with pytest.raises(ConfigError, match="line 1: expected IMAGE,TASK"):
        read_task_file(task_file, ["a"])
    task_file.write_text(f"{tmp_path / 'missing.png'},a\n")
    with pytest.raises(DataError, match="line 1: image not found"):
        read_task_file(task_file, ["a"])


def test_corrupt_or_missing_adapter_files(world, tmp_path):
    predictor = MultiTaskPredictor(world["backbone"])
    good = find_adapter(world["runs"]["lora"])  # the run's adapter/ folder
    data = (good / "adapter_model.safetensors").read_bytes()
    cases = {"truncated": data[:len(data) // 2], "garbage": b"\x80\x04 not a safetensors file at all", "empty": b""}
    for name, content in cases.items():
        folder = tmp_path / name
        shutil.copytree(good, folder)
        (folder / "adapter_model.safetensors").write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            predictor.add_task(name, folder)
        assert "\n" not in str(info.value) and name in str(info.value)
    (tmp_path / "garbage.pdparams").write_bytes(b"\x80\x04 not a pickle at all")  # an older adapter file
    with pytest.raises(CheckpointError) as info:
        predictor.add_task("old", tmp_path / "garbage.pdparams")
    assert "\n" not in str(info.value) and "garbage.pdparams" in str(info.value)
    with pytest.raises(CheckpointError, match="adapter not found"):
        predictor.add_task("nope", tmp_path / "nope.pdparams")
    with pytest.raises(CheckpointError, match="holds no adapter"):
        predictor.add_task("pre", world["backbone"])  # a pretraining run: no adapter
    assert predictor.tasks == []


def test_cli_errors_are_one_line_exit_2(world, tmp_path, capsys):
    image = str(next(world["images"].glob("*.png")))
    broken = tmp_path / "broken.pdparams"
    broken.write_bytes(b"not a checkpoint")
    task_file = tmp_path / "tasks.csv"
    task_file.write_text(f"{image},lora\n{image},cifar\n")
    backbone = ["--backbone", str(world["backbone"])]
    cases = [
        (backbone + [*adapters(world, "lora"), "--adapter", f"lora={world['runs']['ssf']}", image],
         "two tasks named 'lora'"),
        (backbone + [*adapters(world, "lora", "ssf"), "--task", "nope", image], "unknown task 'nope'"),
        (backbone + [*adapters(world, "lora", "ssf"), image], "name the task with --task NAME"),
        (backbone + [*adapters(world, "lora"), "--task-file", str(task_file)], "line 2: unknown task 'cifar'"),
        (backbone + ["--adapter", f"bad={broken}", image], "broken.pdparams"),
        (backbone + ["--adapter", f"wide={world['other']['width']}", image], "width 16 (the backbone: 32)"),
        (backbone + ["--adapter", "lora", image], "expected NAME=PATH"),
        ([*adapters(world, "lora"), image], "--adapter needs --backbone"),
        (["--checkpoint", str(world["runs"]["lora"]), *backbone, *adapters(world, "lora"), image], "not both"),
        ([image], "--checkpoint is required"),
    ]
    for argv, fragment in cases:
        assert predict_main(argv) == 2, argv
        assert fragment in error_line(capsys.readouterr().err), argv
    assert evaluate_main(backbone + ["--adapter", f"bad={broken}"]) == 2
    assert "broken.pdparams" in error_line(capsys.readouterr().err)
    assert export_main(backbone + ["--adapter", f"wide={world['other']['depth']}", "--output", str(tmp_path)]) == 2
    assert "depth 1 (the backbone: 2)" in error_line(capsys.readouterr().err)


def test_a_paddleclas_backbone_brings_its_normalisation_and_checks_geometry(world, tmp_path):
    from ppadapt.models import VisionTransformer
    from ppadapt.models.paddleclas_archs import paddleclas_vit_config

    name = "DeiT_tiny_patch16_224"
    weights = tmp_path / f"{name}_pretrained.pdparams"
    paddle.save(VisionTransformer(paddleclas_vit_config(name), 1000).state_dict(), str(weights))
    backbone = load_backbone(f"paddleclas:{name}", weights_file=weights, img_size=16, patch_size=4)
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.img_size == 16 and not backbone.carried
    with pytest.raises(CheckpointError, match=r"width 32 \(the backbone: 192\); depth 2 \(the backbone: 12\)"):
        MultiTaskPredictor(backbone, {"lora": world["runs"]["lora"]})


def test_multitask_is_exported_and_loads_no_training_module(world, tmp_path):
    assert ppadapt.MultiTaskPredictor is MultiTaskPredictor
    image = str(next(world["images"].glob("*.png")))
    script = f"""
import sys
from ppadapt.apps.multitask import MultiTaskPredictor
from ppadapt.apps.export import export_tasks
p = MultiTaskPredictor({str(world["backbone"])!r}, {{"lora": {str(world["runs"]["lora"])!r}}})
assert "labels" in p({image!r}, task="lora")
export_tasks(p.model, {str(tmp_path)!r}, log=lambda line: None)
print("training modules:", sorted(m for m in sys.modules if m.startswith("ppadapt.training")))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "training modules: []", proc.stdout[-2000:]


def test_bench_multitask_report(capsys):
    """``bench.py --multitask`` on a tiny model: the report's shape and the byte counts (no timings checked)."""
    from ppadapt.apps.bench import main

    argv = ["--multitask", "--tasks", "1,3", "--methods", "bitfit,lora,ssf", "-o", "model.embed_dim=32",
            "-o", "model.depth=2", "-o", "model.num_heads=2", "--steps", "1", "--warmup", "1", "--batch-size", "4",
            "--json", "--quiet"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["tasks"] for r in report["memory"]] == [1, 3]
    one, three = report["memory"]
    backbone = report["setup"]["backbone_bytes"]
    assert one["shared_held_bytes"] > backbone and three["shared_held_bytes"] < 1.5 * backbone  # the backbone once
    assert three["separate_held_bytes"] > 3 * backbone  # three full models
    assert [r["method"] for r in report["switch"]] == ["bitfit", "lora", "ssf"]
    assert report["switch"][0]["copied_bytes"] > 0 and report["switch"][1]["copied_bytes"] == 0  # BitFit's biases
    assert [m["tasks"] for m in report["throughput"]["mixed"]] == [2]
    assert main(["--multitask", "--methods", "full,lora", "--quiet"]) == 2
    assert "full fine-tuning has no adapter" in capsys.readouterr().err


def test_the_scripts_run_and_fail_in_one_line(world):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    common = ["--backbone", str(world["backbone"]), *adapters(world, "linear")]
    proc = subprocess.run([sys.executable, str(REPO / "ppadapt" / "evaluate.py"), *common], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1].split()[:2] == ["linear", "linear"] and proc.stdout.rstrip().endswith("equal")
    proc = subprocess.run([sys.executable, str(REPO / "ppadapt" / "predict.py"), *common, "--task", "cifar",
                           str(world["images"])], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 2 and error_line(proc.stderr) == "error: unknown task 'cifar' (tasks: linear)"
