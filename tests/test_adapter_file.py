"""Adapter files: the folder format (adapter_model.safetensors + adapter_config.json) round-trips
bit for bit for every method that writes one, carries the task's head and class names, reads
without unpickling anything, refuses an adapter of another backbone with one line that says
which, and older adapter.pdparams files still load."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import paddle
import pytest

from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.errors import CheckpointError
from ppadapt.methods import get_method
from ppadapt.methods.build import apply_transfer_method, build_model
from ppadapt.methods.trainable import set_trainable
from ppadapt.runs import paddle_pickle
from ppadapt.runs.adapter_file import (CONFIG_FILE, FORMAT, LEGACY_FORMAT, META_KEY, TENSORS_FILE, adapter_state,
                                       check_adapter_fits, load_adapter, read_adapter, save_adapter)
from ppadapt.runs.checkpoint import load_state_dict, save_safetensors
from ppadapt.utils import safe_pickle

from tiny import NUM_CLASSES, TINY, tiny_vit

METHODS = [("linear", {}), ("bitfit", {}), ("lora", {"rank": 4}), ("adaptformer", {"bottleneck": 8}),
           ("vpt-shallow", {"tokens": 3}), ("vpt-deep", {"tokens": 3}), ("adapter", {"bottleneck": 8}), ("ssf", {})]
CLASSES = [f"class {i}" for i in range(NUM_CLASSES)]
TASK = {"class_names": CLASSES, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "eval_resize": "none"}


def _tuned(method_name: str, backbone_state: dict, seed: int, arch: dict | None = None, **options):
    paddle.seed(seed)
    model = tiny_vit(**(arch or {}))
    if backbone_state is not None:
        model.set_state_dict(backbone_state)
    method = get_method(method_name)
    method.apply_to(model, **options)
    set_trainable(model, method.is_trainable)
    return model


def _move(model: paddle.nn.Layer) -> None:
    """Stand-in for training: move every trainable tensor."""
    for p in model.parameters():
        if not p.stop_gradient:
            p.set_value(p + paddle.randn(p.shape) * 0.05)


def _bytes(value) -> bytes:
    return np.ascontiguousarray(value.numpy()).tobytes()


def _backbone(seed: int = 0, **arch) -> dict:
    paddle.seed(seed)
    return {k: v.clone() for k, v in tiny_vit(**arch).state_dict().items()}


def _save(model, path: Path, name: str, options: dict, **extra) -> Path:
    return save_adapter(model, path, {"method": name, "options": options, **TASK, **extra})


@pytest.mark.parametrize("name,options", METHODS, ids=[m[0] for m in METHODS])
def test_round_trip_is_bit_identical_and_gives_the_full_models_logits(tmp_path, name, options):
    backbone = _backbone()
    tuned = _tuned(name, backbone, seed=1, **options)
    _move(tuned)
    folder = _save(tuned, tmp_path / "adapter", name, options)
    assert folder == tmp_path / "adapter" and sorted(os.listdir(folder)) == [CONFIG_FILE, TENSORS_FILE]

    expected = adapter_state(tuned)
    for path in (folder, folder / TENSORS_FILE, folder / CONFIG_FILE, tmp_path):  # every way to name it
        tensors, meta = read_adapter(path)
        assert sorted(tensors) == sorted(expected) and {"head.weight", "head.bias"} <= set(tensors)
        for k, v in expected.items():
            assert tensors[k].dtype == v.dtype and list(tensors[k].shape) == list(v.shape), k
            assert _bytes(tensors[k]) == _bytes(v), k
    assert meta["format"] == FORMAT and meta["method"] == name and meta["options"] == options
    assert meta["class_names"] == CLASSES and meta["num_classes"] == NUM_CLASSES and meta["head"] == "linear"
    assert meta["mean"] == TASK["mean"] and meta["std"] == TASK["std"] and meta["eval_resize"] == "none"
    assert meta["backbone"] == {**{k: v for k, v in TINY.items()}, "in_chans": 3, "mlp_ratio": 4.0,
                                "qkv_bias": False, "epsilon": 1e-5}
    assert meta["tensors"]["count"] == len(expected) and len(meta["tensors"]["sha256"]) == 64

    fresh = _tuned(name, backbone, seed=2, **options)  # other random init for the method's tensors
    assert load_adapter(fresh, folder, method=name)["class_names"] == CLASSES
    tuned.eval(), fresh.eval()
    x = paddle.randn([2, 3, 32, 32])
    np.testing.assert_array_equal(tuned(x).numpy(), fresh(x).numpy())
    paddle.save(tuned.state_dict(), str(tmp_path / "full.pdparams"))
    assert (folder / TENSORS_FILE).stat().st_size < (tmp_path / "full.pdparams").stat().st_size


def test_a_bn_linear_heads_running_statistics_travel_with_it(tmp_path):
    backbone = _backbone(head="bn_linear")
    tuned = _tuned("lora", backbone, seed=1, arch={"head": "bn_linear"}, rank=2)
    _move(tuned)
    tuned.train()
    tuned(paddle.randn([4, 3, 32, 32]))  # the head's BatchNorm statistics move
    folder = _save(tuned, tmp_path / "adapter", "lora", {"rank": 2})
    tensors, meta = read_adapter(folder)
    assert meta["head"] == "bn_linear"
    stats = [k for k in tensors if k.startswith("head.") and ("_mean" in k or "_variance" in k)]
    assert stats and all(_bytes(tensors[k]) == _bytes(tuned.state_dict()[k]) for k in stats)
    assert not np.allclose(tensors[stats[0]].numpy(), 0.0) or not np.allclose(tensors[stats[1]].numpy(), 1.0)


def test_half_precision_and_integer_tensors_round_trip_exactly(tmp_path):
    paddle.seed(0)
    state = {"bf16": paddle.randn([3, 5]).astype("bfloat16"), "f16": paddle.randn([7]).astype("float16"),
             "f32": paddle.randn([2, 2]), "i64": paddle.to_tensor([1, -2, 3], dtype="int64"),
             "scalar": paddle.to_tensor(2.5)}
    save_safetensors(state, tmp_path / "x.safetensors")
    back = load_state_dict(tmp_path / "x.safetensors")
    assert sorted(back) == sorted(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and list(back[k].shape) == list(v.shape) and _bytes(back[k]) == _bytes(v), k


def test_an_adapter_of_another_precision_is_cast_to_the_models(tmp_path):
    backbone = _backbone()
    tuned = _tuned("bitfit", backbone, seed=1)
    _move(tuned)
    folder = _save(tuned, tmp_path / "adapter", "bitfit", {})
    tensors, _ = read_adapter(folder)
    save_safetensors({k: v.astype("bfloat16") for k, v in tensors.items()}, folder / TENSORS_FILE)
    config = json.loads((folder / CONFIG_FILE).read_text())
    del config["tensors"]["sha256"]  # rewritten by hand: no digest to check
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    fresh = _tuned("bitfit", backbone, seed=2)
    load_adapter(fresh, folder, "bitfit")
    got = fresh.state_dict()["head.weight"]
    assert got.dtype == paddle.float32
    np.testing.assert_array_equal(got.numpy(), tensors["head.weight"].astype("bfloat16").astype("float32").numpy())


# --- never unpickled --------------------------------------------------------------------------

def test_reading_the_folder_format_never_unpickles(tmp_path, monkeypatch):
    backbone = _backbone()
    tuned = _tuned("lora", backbone, seed=1, rank=4)
    _move(tuned)
    folder = _save(tuned, tmp_path / "adapter", "lora", {"rank": 4})
    write_legacy_adapter(tuned, tmp_path / "adapter.pdparams", {"method": "lora", "options": {"rank": 4}})
    save_safetensors(tuned.state_dict(), tmp_path / "final.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")
    for owner, name in ((pickle, "load"), (pickle, "loads"), (paddle, "load"), (paddle_pickle, "load"),
                        (safe_pickle.RestrictedUnpickler, "load")):
        monkeypatch.setattr(owner, name, refuse)

    fresh = _tuned("lora", backbone, seed=2, rank=4)
    assert load_adapter(fresh, folder, "lora")["method"] == "lora"
    assert read_adapter(folder / TENSORS_FILE)[1]["class_names"] == CLASSES
    assert sorted(load_state_dict(tmp_path / "final.safetensors")) == sorted(tuned.state_dict())
    with pytest.raises(CheckpointError, match="something was unpickled"):  # the patch works: the old format unpickles
        read_adapter(tmp_path / "adapter.pdparams")


# --- older adapter.pdparams -------------------------------------------------------------------

def write_legacy_adapter(model: paddle.nn.Layer, path: Path, meta: dict) -> None:
    """What ppadapt's save_adapter wrote before the folder format: the adapter's state dict
    with ``meta`` as UTF-8 JSON in a uint8 tensor under META_KEY, pickled by paddle.save."""
    state = dict(adapter_state(model))
    blob = json.dumps(meta, sort_keys=True, default=str).encode()
    state[META_KEY] = paddle.to_tensor(np.frombuffer(blob, dtype="uint8").copy())
    paddle.save(state, str(path))


def test_an_older_adapter_pdparams_still_loads_with_identical_tensors(tmp_path):
    backbone = _backbone()
    tuned = _tuned("adaptformer", backbone, seed=1, bottleneck=8)
    _move(tuned)
    model_section = {**TINY, "qkv_bias": False, "carry": {}, "head": "linear"}
    old = {"method": "adaptformer", "options": {"bottleneck": 8}, "methods": {}, "model": model_section}
    bare = tmp_path / "bare" / "adapter.pdparams"
    bare.parent.mkdir()
    write_legacy_adapter(tuned, bare, old)

    tensors, meta = read_adapter(bare)
    expected = adapter_state(tuned)
    assert sorted(tensors) == sorted(expected) and all(_bytes(tensors[k]) == _bytes(v) for k, v in expected.items())
    assert meta["format"] == LEGACY_FORMAT and meta["method"] == "adaptformer" and meta["model"] == model_section
    assert meta["backbone"]["embed_dim"] == 32 and meta["backbone"]["patch_size"] == 8
    assert "class_names" not in meta and "mean" not in meta  # nothing beside it says

    run = tmp_path / "run"  # in its run folder, run.json gives the task
    run.mkdir()
    write_legacy_adapter(tuned, run / "adapter.pdparams", old)
    (run / "run.json").write_text(json.dumps({
        "stage": "transfer", "class_names": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3,
        "config": {"transfer": {"eval_resize": "resize_center_crop", "pretrained": "output/pre/final.pdparams"}}}))
    for path in (run / "adapter.pdparams", run):  # the run folder finds it too
        _, meta = read_adapter(path)
        assert meta["class_names"] == CLASSES and meta["num_classes"] == NUM_CLASSES
        assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3
        assert meta["eval_resize"] == "resize_center_crop" and meta["base_model"] == "output/pre/final.pdparams"

    fresh = _tuned("adaptformer", backbone, seed=2, bottleneck=8)
    load_adapter(fresh, bare, "adaptformer")
    tuned.eval(), fresh.eval()
    x = paddle.randn([2, 3, 32, 32])
    np.testing.assert_array_equal(tuned(x).numpy(), fresh(x).numpy())
    with pytest.raises(CheckpointError, match="trained on a ViT of width 32, depth 2, patch 8; this backbone has "
                                              "width 64, depth 2, patch 8"):
        load_adapter(_tuned("adaptformer", None, seed=0, arch={"embed_dim": 64}, bottleneck=8), bare)


def test_saving_to_a_pdparams_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="written as a folder"):
        save_adapter(tiny_vit(), tmp_path / "adapter.pdparams", {"method": "linear"})


# --- bad input: one line each -----------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    """(backbone state, folder) of a LoRA adapter on the tiny ViT."""
    backbone = _backbone()
    tuned = _tuned("lora", backbone, seed=1, rank=4)
    _move(tuned)
    return backbone, _save(tuned, tmp_path / "adapter", "lora", {"rank": 4})


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    config.update(changes)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


BROKEN = {  # name: (spoil the folder, what the line says)
    "truncated": (lambda f: (f / TENSORS_FILE).write_bytes((f / TENSORS_FILE).read_bytes()[:-100]),
                  "cannot be read: it is truncated, corrupt or not a safetensors file"),
    "garbage": (lambda f: (f / TENSORS_FILE).write_bytes(os.urandom(300)),
                "cannot be read: it is truncated, corrupt or not a safetensors file"),
    "empty": (lambda f: (f / TENSORS_FILE).write_bytes(b""), "is empty (0 bytes)"),
    "flipped byte": (lambda f: _flip_last_byte(f / TENSORS_FILE), "does not match its adapter_config.json"),
    "no tensors": (lambda f: (f / TENSORS_FILE).unlink(), f"has no {TENSORS_FILE}"),
    "no config": (lambda f: (f / CONFIG_FILE).unlink(), f"has no {CONFIG_FILE} beside it"),
    "bad json": (lambda f: (f / CONFIG_FILE).write_text('{"format": "ppadapt-adapter",'), "is not valid JSON"),
    "a list": (lambda f: (f / CONFIG_FILE).write_text("[]"), "holds a JSON list, not an adapter config"),
    "PEFT's": (lambda f: (f / CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "r": 8})),
               "is a Hugging Face PEFT adapter (LORA, for PyTorch models)"),
    "another format": (lambda f: _edit_config(f, format="something-else"),
                       "is not a ppadapt adapter config (format 'something-else', expected 'ppadapt-adapter')"),
    "newer": (lambda f: _edit_config(f, format_version=99), "is format version 99, written by a newer ppadapt"),
    "no method": (lambda f: _edit_config(f, method=None), "'method' must be a string"),
}


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_adapter_is_one_line_naming_the_file(saved, case):
    backbone, folder = saved
    spoil, fragment = BROKEN[case]
    spoil(folder)
    with pytest.raises(CheckpointError) as info:
        load_adapter(_tuned("lora", backbone, seed=2, rank=4), folder, "lora")
    message = str(info.value)
    assert fragment in message and str(folder) in message and "\n" not in message


@pytest.mark.parametrize("arch,words", [
    ({"embed_dim": 48}, "width 48, depth 2, patch 8"),
    ({"depth": 3}, "width 32, depth 3, patch 8"),
    ({"patch_size": 4}, "width 32, depth 2, patch 4"),
    ({"num_heads": 4}, "width 32, depth 2, patch 8, num_heads 4"),
], ids=["width", "depth", "patch", "heads"])
def test_an_adapter_of_another_backbone_says_which(saved, arch, words):
    _, folder = saved
    other = _tuned("lora", None, seed=0, arch=arch, rank=4)
    with pytest.raises(CheckpointError) as info:
        load_adapter(other, folder, "lora")
    mine = "width 32, depth 2, patch 8" + (", num_heads 2" if "num_heads" in arch else "")
    assert str(info.value).startswith(f"adapter {folder} was trained on a ViT of {mine}; this backbone has {words}: ")
    # the check alone, on an architecture: what a caller asks before building anything
    with pytest.raises(CheckpointError, match="this backbone has " + words):
        check_adapter_fits(read_adapter(folder)[1], {**TINY, **arch})
    check_adapter_fits(read_adapter(folder)[1], {**TINY, "img_size": 64})  # another resolution fits


def test_another_method_head_or_shape_is_refused(saved, tmp_path):
    backbone, folder = saved
    with pytest.raises(CheckpointError, match="holds a 'lora' adapter but the model uses method 'ssf'"):
        load_adapter(_tuned("ssf", backbone, seed=0), folder, "ssf")
    with pytest.raises(CheckpointError, match="has a head for 10 classes but the model has 3"):
        load_adapter(_three_class_lora(), folder, "lora")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_adapter(_tuned("lora", backbone, seed=0, rank=2), folder, "lora")
    with pytest.raises(CheckpointError, match="adapter not found"):
        read_adapter(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no adapter"):
        read_adapter(tmp_path / "empty")
    paddle.save(backbone, str(tmp_path / "plain.pdparams"))
    with pytest.raises(CheckpointError, match="not an adapter file"):
        read_adapter(tmp_path / "plain.pdparams")


def _three_class_lora():
    model = tiny_vit(class_num=3)
    get_method("lora").apply_to(model, rank=4)
    return model


# --- through transfer.py --resume-adapter ------------------------------------------------------

CLI_TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "epochs=1", "batch_size=256", "warmup_steps=1"]


def _cli_adapter(path: Path, *changes: str) -> Path:
    """A LoRA adapter of the digits config's tiny model (with ``changes``), as transfer.py writes it."""
    from ppadapt.training.trainer import adapter_meta

    cfg = load_config(CONFIG_DIR / "digits.yaml", [*CLI_TINY, "method.name=lora", *changes], stage="transfer")
    model = build_model(cfg, 5)
    apply_transfer_method(model, cfg)
    return save_adapter(model, path, {**adapter_meta(cfg, model), "class_names": list("56789")})


CLI_CASES = {  # name: (make the adapter at a path, what the error line says)
    "corrupt": (lambda p: BROKEN["garbage"][0](_cli_adapter(p)), BROKEN["garbage"][1]),
    "truncated": (lambda p: BROKEN["truncated"][0](_cli_adapter(p)), BROKEN["truncated"][1]),
    "missing json": (lambda p: BROKEN["no config"][0](_cli_adapter(p)), BROKEN["no config"][1]),
    "another format's json": (lambda p: BROKEN["another format"][0](_cli_adapter(p)), BROKEN["another format"][1]),
    "another width": (lambda p: _cli_adapter(p, "model.embed_dim=24"),
                      "was trained on a ViT of width 24, depth 1, patch 4; this backbone has width 16, depth 1, "
                      "patch 4: load it onto the backbone it was trained on"),
    "another depth": (lambda p: _cli_adapter(p, "model.depth=2"),
                      "was trained on a ViT of width 16, depth 2, patch 4; this backbone has width 16, depth 1, "
                      "patch 4"),
    "another patch": (lambda p: _cli_adapter(p, "model.patch_size=8"),
                      "was trained on a ViT of width 16, depth 1, patch 8; this backbone has width 16, depth 1, "
                      "patch 4"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_transfer_resume_adapter_says_what_is_wrong_in_one_line(tmp_path, capsys, case):
    from ppadapt.apps.cli import transfer_main

    make, fragment = CLI_CASES[case]
    make(tmp_path / "adapter")
    capsys.readouterr()
    args = ["--config", str(CONFIG_DIR / "digits.yaml"), "--output", str(tmp_path / "out"), "--quiet",
            "--pretrained", "none", "--method", "lora", "--resume-adapter", str(tmp_path / "adapter")]
    assert transfer_main(args + sum((["-o", o] for o in CLI_TINY), [])) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert fragment in lines[0] and str(tmp_path / "adapter") in lines[0], lines[0]


def test_a_transfer_writes_the_folder_and_resume_adapter_loads_it(tmp_path, capsys):
    from ppadapt.apps.cli import transfer_main

    def transfer(out: Path, *extra: str) -> Path:
        args = ["--config", str(CONFIG_DIR / "digits.yaml"), "--output", str(out), "--pretrained", "none",
                "--method", "lora", *extra]
        assert transfer_main(args + sum((["-o", o] for o in CLI_TINY), [])) == 0, capsys.readouterr().err
        return out / "digits_transfer_digits_lora"

    run = transfer(tmp_path / "first")
    out = capsys.readouterr().out
    assert f"adapter-only checkpoint: {run / 'adapter'}/ (adapter_model.safetensors + adapter_config.json)" in out
    assert sorted(os.listdir(run / "adapter")) == [CONFIG_FILE, TENSORS_FILE]
    assert not (run / "adapter.pdparams").exists()
    record = json.loads((run / "run.json").read_text())
    tensors, meta = read_adapter(run / "adapter")
    assert meta["class_names"] == record["class_names"] and meta["num_classes"] == 5
    assert meta["mean"] == record["mean"] and meta["std"] == record["std"] and meta["base_model"] is None
    assert meta["model"] == record["config"]["model"] and meta["backbone"]["embed_dim"] == 16
    final = load_state_dict(run / "final.pdparams")
    assert all(_bytes(v) == _bytes(final[k]) for k, v in tensors.items())  # the trained tensors, as trained

    stale = tmp_path / "again" / "digits_transfer_digits_lora" / "adapter.pdparams"  # an older ppadapt's run here
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"older")
    again = transfer(tmp_path / "again", "--resume-adapter", str(run))  # the run folder finds its adapter
    out = capsys.readouterr().out
    assert f"loaded adapter {run}" in out and f"removed {stale} of an earlier run" in out
    assert not stale.exists() and read_adapter(again)[1]["class_names"] == meta["class_names"]
