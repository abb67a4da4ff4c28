"""export.py: Paddle inference models of real (tiny) runs, loaded back with paddle.inference
and compared with the dygraph model, with dynamic batch, merged LoRA/SSF, dropout off."""
import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import paddle
import pytest
import yaml

from cifar_archive import CIFAR10_NAMES, write_cifar_archive
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.apps.export import export_main, export_model, run_inference
from ppadapt.apps.predict import Predictor
from ppadapt.runs.loading import load_run

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.embed_dim=16", "model.depth=2", "model.num_heads=2", "model.patch_size=8", "adapter.bottleneck=4",
        "warmup_steps=1", "batch_size=32", "lr=0.2", "epochs=2"]
METHODS = {"full": [], "adaptformer": ["transfer.freeze=true"], "lora": ["method.name=lora"],
           "ssf": ["method.name=ssf"], "vpt-deep": ["method.name=vpt-deep"],
           "vpt-shallow": ["method.name=vpt-shallow"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny real transfer per method (configs/cpu.yaml shrunk; ~0.1 s each), and test images."""
    from ppadapt.data import build_datasets
    from ppadapt.training.engine import run_stage

    root = tmp_path_factory.mktemp("export")
    archive = write_cifar_archive(root / "cifar-10-python.tar.gz", "cifar10", train_per_class=8, test_per_class=2)
    dirs = {}
    for name, extra in METHODS.items():
        # no AdaptFormer branches in the backbone: a LoRA/SSF export is then a plain ViT
        options = TINY + [f"transfer.data_file={archive}", "transfer.pretrained=none"] + extra
        if name != "adaptformer":
            options.append("adapter.enabled=false")
        cfg = load_config(CONFIG_DIR / "cpu.yaml", options, stage="transfer")
        cfg.output = str(root / "out")
        if name == "adaptformer":
            cfg.model.carry["adaptformer"]["dropout"] = 0.5  # AdaptFormer's branch dropout: must be off in the export
        dirs[name] = run_stage(cfg, "transfer", log=lambda line: None, verbose=0).run_dir
    test = build_datasets("cifar10", role="transfer", img_size=32, data_file=archive, classes=[5, 6, 7, 8, 9],
                          augment=False).test
    batch = np.stack([test[i][0] for i in range(3)])  # the run's eval preprocessing
    return {"dirs": dirs, "root": root, "batch": batch, "images": test.images[:3]}


def ops(model_file: Path) -> collections.Counter:
    """Operator types of a PIR program (.json), e.g. {'pd_op.matmul' as '1.matmul': 9, ...}."""
    names = re.findall(r'"#":\s*"(1\.[a-z_0-9]+)"', model_file.read_text())
    return collections.Counter(names)


def inference_predictor(result):
    config = paddle.inference.Config(str(result.model_file), str(result.params_file))
    config.disable_glog_info()
    return paddle.inference.create_predictor(config)


@pytest.mark.parametrize("method", ["full", "adaptformer", "lora"])
def test_paddle_inference_equals_the_dygraph_model_with_dynamic_batch(runs, method, tmp_path):
    result = export_model(runs["dirs"][method], tmp_path / method, log=lambda line: None)
    assert result.model_file.name in ("inference.json", "inference.pdmodel")  # Paddle 3 (PIR) / 2
    assert result.params_file.name == "inference.pdiparams" and result.max_abs_diff < 1e-5
    assert result.input_name == "image"
    assert {p.name for p in result.files} >= {result.model_file.name, "inference.pdiparams", "inference.yml"}

    reference = load_run(runs["dirs"][method]).model  # a fresh, unmerged model in eval mode
    with paddle.no_grad():
        expected = reference(paddle.to_tensor(runs["batch"])).numpy()
    predictor = inference_predictor(result)
    for n in (1, 3, 1):  # dynamic batch, and back
        got = run_inference(predictor, runs["batch"][:n])
        assert got.shape == (n, 5)
        assert np.abs(got - expected[:n]).max() < 1e-5, method
    assert result.merged == (["lora"] if method == "lora" else [])


def test_merged_methods_export_a_plain_vit_graph(runs, tmp_path):
    """LoRA and SSF fold into the weights: the same operators as full fine-tuning's ViT.
    AdaptFormer's branches stay (more matmuls), with their dropout in test mode."""
    full = ops(export_model(runs["dirs"]["full"], tmp_path / "full", log=lambda line: None).model_file)
    for method in ("lora", "ssf"):
        result = export_model(runs["dirs"][method], tmp_path / method, log=lambda line: None)
        assert ops(result.model_file) == full, method
        assert result.merged == [method]
    adapt = export_model(runs["dirs"]["adaptformer"], tmp_path / "adaptformer", log=lambda line: None)
    program = adapt.model_file.read_text()
    assert ops(adapt.model_file)["1.matmul"] > full["1.matmul"]
    dropouts = re.findall(r'"1\.dropout","A":\[\{"AT":\{"#":"0\.a_bool","D":(true|false)\},"N":"is_test"', program)
    assert dropouts and set(dropouts) == {"true"}
    assert "pylayer" not in program  # fast_layers' PyLayer path is dygraph-training only


@pytest.mark.parametrize("method", ["vpt-deep", "vpt-shallow", "ssf"])
def test_other_methods_export_with_dynamic_batch(runs, method, tmp_path):
    result = export_model(runs["dirs"][method], tmp_path / method, log=lambda line: None)
    reference = load_run(runs["dirs"][method]).model
    with paddle.no_grad():
        expected = reference(paddle.to_tensor(runs["batch"])).numpy()
    predictor = inference_predictor(result)
    for n in (3, 1):
        assert np.abs(run_inference(predictor, runs["batch"][:n]) - expected[:n]).max() < 1e-5


def test_fast_layers_take_the_plain_path_under_jit(tmp_path):
    """A ViT with trainable parameters (its Linear/LayerNorm use a PyLayer in dygraph training)
    saves with paddle's own ops and computes the same."""
    from tiny import tiny_vit

    paddle.seed(3)
    model = tiny_vit(class_num=4)
    model.eval()
    x = paddle.randn([3, 3, 32, 32])
    with paddle.no_grad():
        expected = model(x).numpy()
    paddle.jit.save(model, str(tmp_path / "m"),
                    input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32", "image")])
    model_file = next(p for p in tmp_path.iterdir() if p.suffix in (".json", ".pdmodel"))
    assert "pylayer" not in model_file.read_text(errors="replace")
    config = paddle.inference.Config(str(model_file), str(tmp_path / "m.pdiparams"))
    config.disable_glog_info()
    got = run_inference(paddle.inference.create_predictor(config), x.numpy())
    assert np.abs(got - expected).max() < 1e-5


def test_inference_yml_is_enough_to_deploy(runs, tmp_path):
    """Preprocess raw uint8 images only from inference.yml, run the export: the Predictor's answer."""
    result = export_model(runs["dirs"]["lora"], tmp_path / "lora", log=lambda line: None)
    meta = yaml.safe_load(result.meta_file.read_text())
    record = json.loads((runs["dirs"]["lora"] / "run.json").read_text())
    assert meta["class_names"] == record["class_names"] == list(CIFAR10_NAMES[5:])
    assert meta["preprocess"]["mean"] == pytest.approx(record["mean"])
    assert meta["preprocess"]["std"] == pytest.approx(record["std"])
    assert meta["preprocess"]["resize"] == [32, 32] and meta["preprocess"]["color"] == "RGB"
    assert meta["model"]["model_file"] == result.model_file.name
    assert meta["model"]["input"]["shape"] == [-1, 3, 32, 32] and meta["source"]["merged"] == ["lora"]

    pre = meta["preprocess"]
    h, w = pre["resize"]
    raw = [cv2.resize(np.repeat(np.repeat(im, 2, 0), 2, 1), (w, h), interpolation=cv2.INTER_AREA)
           for im in runs["images"]]  # deployers get images of any size
    x = np.stack([((im / 255.0 - pre["mean"]) / pre["std"]).transpose(2, 0, 1) for im in raw]).astype("float32")
    logits = run_inference(inference_predictor(result), x)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    api = Predictor(runs["dirs"]["lora"], topk=5)([np.repeat(np.repeat(im, 2, 0), 2, 1) for im in runs["images"]])
    for p, r in zip(probs, api):
        assert [meta["class_names"][i] for i in np.argsort(-p)] == r["labels"]
        np.testing.assert_allclose(np.sort(p)[::-1], r["scores"], atol=1e-5)


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    return subprocess.run([sys.executable, str(REPO / "ppadapt" / "export.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def test_cli_prints_the_files_and_fails_in_one_line(runs, tmp_path, capsys):
    out = tmp_path / "deploy"
    proc = run_cli("--checkpoint", runs["dirs"]["lora"] / "final.pdparams", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""  # Paddle's C++ chatter during jit.save is filtered
    assert "merged lora into the backbone" in proc.stdout and "checked with paddle.inference" in proc.stdout
    for name in ("inference.json", "inference.pdiparams", "inference.yml"):
        assert f"{out / name}  " in proc.stdout
    assert "input 'image' [N, 3, 32, 32]" in proc.stdout

    def error(argv):
        assert export_main(argv) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len([ln for ln in lines if ln.startswith("error: ")]) == 1 and lines[-1].startswith("error: ")
        return lines[-1]

    assert "checkpoint not found" in error(["--checkpoint", str(tmp_path / "nope"), "--output", str(out)])
    assert "no run.json" in error(["--checkpoint", str(tmp_path), "--output", str(out)])
    (tmp_path / "file").write_text("x")
    assert "not a folder" in error(["--checkpoint", str(runs["dirs"]["full"]), "--output", str(tmp_path / "file")])
    try:
        import paddle2onnx  # noqa: F401
    except ImportError:
        assert "paddle2onnx" in error(["--checkpoint", str(runs["dirs"]["full"]), "--output", str(out), "--onnx"])


def test_bn_linear_head_exports_and_predicts_with_its_running_statistics(runs, tmp_path):
    """model.head=bn_linear (AdaptFormer's head): its BatchNorm's running statistics are saved
    with the run, in the adapter file, and used (eval mode) by load_run, predict and export."""
    from ppadapt.methods.build import apply_transfer_method, build_model
    from ppadapt.runs.adapter_file import load_adapter
    from ppadapt.runs.checkpoint import load_state_dict, load_weights
    from ppadapt.training.engine import run_stage

    archive = runs["root"] / "cifar-10-python.tar.gz"
    options = TINY + [f"transfer.data_file={archive}", "transfer.pretrained=none", "transfer.freeze=true",
                      "model.head=bn_linear"]
    cfg = load_config(CONFIG_DIR / "cpu.yaml", options, stage="transfer")
    cfg.output = str(tmp_path / "out")
    run_dir = run_stage(cfg, "transfer", log=lambda line: None, verbose=0).run_dir

    loaded = load_run(run_dir, "final")
    model = loaded.model
    assert not model.training and not model.head.norm.training
    saved = load_state_dict(str(run_dir / "final.pdparams"))
    mean, var = saved["head.norm._mean"], saved["head.norm._variance"]
    assert np.abs(np.asarray(mean)).max() > 0 and not np.allclose(np.asarray(var), 1.0)  # trained statistics
    np.testing.assert_array_equal(model.head.norm._mean.numpy(), np.asarray(mean))
    with paddle.no_grad():
        expected = model(paddle.to_tensor(runs["batch"])).numpy()
        one = model(paddle.to_tensor(runs["batch"][:1])).numpy()
    np.testing.assert_allclose(one, expected[:1], atol=1e-5)  # eval mode: no batch statistics

    result = export_model(run_dir, tmp_path / "export", weights="final", log=lambda line: None)
    assert result.max_abs_diff < 1e-5
    predictor = inference_predictor(result)
    for n in (1, 3):
        assert np.abs(run_inference(predictor, runs["batch"][:n]) - expected[:n]).max() < 1e-5

    scores = [r["scores"][0] for r in Predictor(run_dir, weights="final")(list(runs["images"]))]
    single = Predictor(run_dir, weights="final")(runs["images"][0])["scores"][0]
    assert single == pytest.approx(scores[0], abs=1e-6)

    # the adapter file (branches + head + the head's statistics) on the same backbone: the same model
    fresh = build_model(cfg, 5)
    apply_transfer_method(fresh, cfg)
    backbone = {k: v for k, v in saved.items() if not k.startswith("head.") and ".adaptmlp." not in k}
    load_weights(fresh, backbone, skip=lambda k: k.startswith("head."), allow_missing=lambda k: ".adaptmlp." in k)
    meta = load_adapter(fresh, run_dir / "adapter")
    assert meta["method"] == "adaptformer"
    fresh.eval()
    with paddle.no_grad():
        np.testing.assert_allclose(fresh(paddle.to_tensor(runs["batch"])).numpy(), expected, atol=1e-6)
