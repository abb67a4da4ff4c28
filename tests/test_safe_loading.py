"""Loading a checkpoint never runs code from it (issue 11).

A ``.pdparams``/``.pdckpt`` is a pickle, and a crafted pickle runs code when unpickled
(``paddle.load`` runs it before anything can check what was loaded). Every way ppadapt
reads such a file goes through :mod:`ppadapt.runs.paddle_pickle`'s restricted
unpickler: a file whose pickle calls ``os.system`` (here: ``touch MARKER``) must fail
with one ``error:`` line, exit status 2, no traceback, and no MARKER. And every kind of
file ppadapt writes, plus PaddleClas's and older Paddle formats, must load with exactly
the values ``paddle.load`` gives.
"""
from __future__ import annotations

import builtins
import collections
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.errors import CheckpointError
from ppadapt.runs import paddle_pickle, pretrained
from ppadapt.runs.adapter_file import META_KEY, read_adapter
from ppadapt.runs.checkpoint import atomic_save, load_state_dict
from ppadapt.runs.resume_file import FORMAT, load_checkpoint
from ppadapt.training.resume import restore_global_rng, rng_state, set_paddle_rng
from ppadapt.utils import safe_pickle
from ppadapt.utils.safe_pickle import UnsafePickleError

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "epochs=1", "batch_size=256",
        "warmup_steps=1"]
SYSTEM = f"{os.system.__module__}.system"  # posix.system: how pickle names os.system


# --- crafted pickles -----------------------------------------------------------------------

class Call:
    """Pickles as a call of ``func(*args)``: what an attacker's ``__reduce__`` returns."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def touch(marker: Path) -> Call:
    return Call(os.system, f"touch {marker}")


def write_evil(path: Path, payload, protocol: int = 4) -> Path:
    """A .pdparams whose unpickling runs ``payload`` (a state dict with one poisoned tensor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"pos_embed": np.zeros((1, 2, 3), "float32"), "cls_token": payload}, f, protocol=protocol)
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "the crafted pickle ran"


def test_the_crafted_pickle_does_run_under_plain_pickle(tmp_path):
    """The control: the payload these tests use really runs when unpickled the ordinary way."""
    path = write_evil(tmp_path / "evil.pdparams", touch(tmp_path / "RAN"))
    with open(path, "rb") as f:
        pickle.load(f)
    assert (tmp_path / "RAN").exists()


# --- the restricted unpickler itself --------------------------------------------------------

def _stack_global(module: str, name: str, arg: str) -> bytes:
    """A protocol-4 pickle of ``module.name(arg)`` with arbitrary (even multi-line) names."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"\x80\x04" + s(module) + s(name) + b"\x93" + s(arg) + b"\x85R."


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_os_system_is_refused_in_every_protocol(tmp_path, marker, protocol):
    path = write_evil(tmp_path / "evil.pdparams", touch(marker), protocol)
    with pytest.raises(UnsafePickleError) as exc:
        paddle_pickle.load(path)
    assert exc.value.target == SYSTEM


@pytest.mark.parametrize("payload,target", [
    (lambda m: Call(builtins.exec, f"open({str(m)!r}, 'w').close()"), "builtins.exec"),
    (lambda m: Call(builtins.eval, f"open({str(m)!r}, 'w')"), "builtins.eval"),
    (lambda m: Call(builtins.eval, "data", {"data": np.zeros(2), "x": Call(os.system, f"touch {m}")}), SYSTEM),
    (lambda m: Call(builtins.eval, "data", {"data": np.zeros(2), "x": 1}), "builtins.eval"),
    (lambda m: Call(getattr, Path(m), "touch"), "builtins.getattr"),
    (lambda m: Call(subprocess.call, ["touch", str(m)]), "subprocess.call"),
    (lambda m: Call(shutil.copy, __file__, str(m)), "shutil.copy"),
    (lambda m: np.array([1, "a"], dtype=object), "numpy.dtype"),
    (lambda m: collections.Counter(a=1), "collections.Counter"),
])
def test_anything_but_plain_data_is_refused(tmp_path, marker, payload, target):
    path = write_evil(tmp_path / "evil.pdparams", payload(marker))
    with pytest.raises(UnsafePickleError) as exc:
        paddle_pickle.load(path)
    assert exc.value.target == target


def test_refusal_names_are_one_line_and_persistent_ids_are_refused(tmp_path):
    with pytest.raises(UnsafePickleError) as exc:
        safe_pickle.loads(_stack_global("os\nimport x", "system\r", "true"), paddle_pickle.PADDLE_FILE)
    assert "\n" not in str(exc.value) and "\r" not in str(exc.value) and exc.value.target.startswith("'os\\n")

    class WithPid(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext" if isinstance(obj, str) and obj == "outside" else None
    buffer = io.BytesIO()
    WithPid(buffer, protocol=4).dump({"w": "outside"})
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_pickle.loads(buffer.getvalue(), paddle_pickle.PADDLE_FILE)


def test_ndarray_and_reconstruct_only_as_numpy_pickles_them():
    with pytest.raises(UnsafePickleError, match="numpy.ndarray"):  # the class itself is not callable
        safe_pickle.loads(pickle.dumps(Call(np.ndarray, (2,))), safe_pickle.NUMPY_ARRAYS)
    with pytest.raises(UnsafePickleError, match="_reconstruct"):
        safe_pickle.loads(pickle.dumps(Call(safe_pickle._np_reconstruct, collections.OrderedDict, (0,), b"b")),
                          paddle_pickle.PADDLE_FILE)
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        safe_pickle.loads(pickle.dumps(Call(__import__("_codecs").encode, "x", "rot13")), safe_pickle.NUMPY_ARRAYS)


def test_generator_state_blob_allows_paddle_generator_states_only(tmp_path, marker):
    paddle.seed(7)
    blob = rng_state()["paddle"]
    expected = paddle.rand([5]).numpy()
    set_paddle_rng(blob)  # the state before the draw
    np.testing.assert_array_equal(paddle.rand([5]).numpy(), expected)

    evil = np.frombuffer(pickle.dumps([touch(marker)]), dtype=np.uint8)
    with pytest.raises(CheckpointError) as exc:
        set_paddle_rng(evil)
    assert SYSTEM in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(UnsafePickleError):  # arrays are fine in a checkpoint, not in this blob
        paddle_pickle.generator_states(pickle.dumps([np.zeros(2)]))


# --- every file ppadapt writes loads as paddle.load loads it --------------------------------

def assert_same(a, b, where="file"):
    """Same types, keys (in order), dtypes, tensor names and values."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, paddle.Tensor):
        assert (a.dtype, a.shape, a.place.is_cpu_place()) == (b.dtype, b.shape, b.place.is_cpu_place()), where
        auto = "generated_tensor_"  # a counter, different for every tensor made
        assert a.name == b.name or (a.name.startswith(auto) and b.name.startswith(auto)), where
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=where)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} vs {b!r}"


@dataclass
class World:
    root: Path
    pretrain: Path  # a real run directory of a pretraining (best, final, run.json, resume.pdckpt)
    transfer: Path  # of a LoRA transfer from it (also the adapter/ folder)
    image: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from ppadapt.training.engine import run_stage

    root = tmp_path_factory.mktemp("safe_loading")
    dirs = {}
    for stage, extra in (("pretrain", []), ("transfer", ["method.name=lora"])):
        cfg = load_config(CONFIG_DIR / "digits.yaml", TINY + extra, stage=stage)
        cfg.output = str(root / "output")
        dirs[stage] = run_stage(cfg, stage, log=lambda line: None, verbose=0).run_dir
    image = root / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    assert (dirs["transfer"] / "adapter" / "adapter_model.safetensors").is_file()
    return World(root, dirs["pretrain"], dirs["transfer"], image)


@pytest.mark.parametrize("name", ["pretrain/best.pdparams", "pretrain/final.pdparams", "pretrain/resume.pdckpt",
                                  "transfer/final.pdparams", "transfer/resume.pdckpt"])
@pytest.mark.parametrize("return_numpy", [False, True])
def test_files_ppadapt_writes_load_as_paddle_load_does(world, name, return_numpy):
    stage, file = name.split("/")
    path = getattr(world, stage) / file
    assert_same_load(path, return_numpy)


def assert_same_load(path: Path, return_numpy: bool) -> None:
    """paddle_pickle.load gives what paddle.load gives, or fails where it fails (a resume
    checkpoint's uint32 numpy generator state cannot become a tensor: ppadapt reads those
    with return_numpy=True)."""
    try:
        expected = paddle.load(str(path), return_numpy=return_numpy)
    except Exception as exc:
        with pytest.raises(type(exc)):
            paddle_pickle.load(path, return_numpy=return_numpy)
        return
    assert_same(paddle_pickle.load(path, return_numpy=return_numpy), expected, f"{path.name} {return_numpy=}")


def test_the_owners_give_what_they_gave_through_paddle_load(world):
    for path in (world.pretrain / "best.pdparams", world.transfer / "final.pdparams"):
        assert_same(load_state_dict(str(path)), paddle.load(str(path)), path.name)
    tensors, meta = read_adapter(world.transfer / "adapter")  # safetensors: no pickle at all
    final = paddle.load(str(world.transfer / "final.pdparams"))
    for k, v in tensors.items():  # the trained tensors, exactly (safetensors keeps no Paddle tensor names)
        assert v.dtype == final[k].dtype and v.numpy().tobytes() == final[k].numpy().tobytes(), k
    assert meta["method"] == "lora"
    # an older adapter.pdparams (the same tensors, the meta as a uint8 tensor) through the restricted reader
    old = {**tensors, META_KEY: paddle.to_tensor(np.frombuffer(json.dumps(meta).encode(), dtype="uint8").copy())}
    paddle.save(old, str(world.root / "adapter.pdparams"))
    legacy, legacy_meta = read_adapter(world.root / "adapter.pdparams")
    expected = paddle.load(str(world.root / "adapter.pdparams"))
    expected.pop(META_KEY)
    assert_same(legacy, expected, "older adapter")
    assert legacy_meta["method"] == "lora"
    state = load_checkpoint(world.transfer / "resume.pdckpt", "transfer")
    assert_same(state, paddle.load(str(world.transfer / "resume.pdckpt"), return_numpy=True), "resume")
    # what the checkpoint's generators hold comes back through the restricted reader too
    rng = state["rng"]
    assert rng["numpy"][0] == "MT19937" and rng["numpy"][1].dtype == np.uint32 and len(rng["python"][1]) == 625
    assert len(paddle_pickle.generator_states(np.asarray(rng["paddle"][0]).tobytes())) >= 1


def test_numpy_and_python_generator_states_round_trip(tmp_path):
    np.random.seed(11)
    random.seed(12)
    atomic_save({"format": FORMAT, "version": 1, "stage": "pretrain", "rng": rng_state()},
                str(tmp_path / "resume.pdckpt"))
    expected = (np.random.rand(3), random.random())
    np.random.seed(0)
    random.seed(0)
    restore_global_rng(load_checkpoint(tmp_path / "resume.pdckpt"))
    assert (np.random.rand(3).tolist(), random.random()) == (expected[0].tolist(), expected[1])


def test_paddleclas_and_older_paddle_formats_load_as_paddle_load_does(tmp_path):
    from paddleclas.ppcls.arch.backbone.model_zoo import vision_transformer as clas_vt

    paddle.seed(0)
    clas = clas_vt.VisionTransformer(img_size=32, patch_size=8, class_num=10, embed_dim=32, depth=2, num_heads=2,
                                     qkv_bias=True, epsilon=1e-6)
    files = {}
    for protocol in (2, 3, 4):
        files[f"paddleclas-p{protocol}"] = tmp_path / f"clas{protocol}.pdparams"
        paddle.save(clas.state_dict(), str(files[f"paddleclas-p{protocol}"]), protocol=protocol)
    arrays = {k: v.numpy() for k, v in clas.state_dict().items()}
    files["ordered-dict-of-arrays-p2"] = tmp_path / "od.pdparams"  # Paddle 2.0-era / hand-converted weights
    with open(files["ordered-dict-of-arrays-p2"], "wb") as f:
        pickle.dump(collections.OrderedDict(arrays), f, protocol=2)
    files["nested-tensors"] = tmp_path / "nested.pdckpt"  # _pickle_save's (name, array) tuples
    paddle.save({"model": clas.state_dict(), "epoch": 3, "scale": np.float32(0.5)}, str(files["nested-tensors"]))
    files["dense-tensor"] = tmp_path / "dense.pdckpt"  # _pickle_save's eval("data", {"data": ...})
    paddle.save({"w": clas.pos_embed.value().get_tensor(), "k": [1, 2.5, "x", None, True]}, str(files["dense-tensor"]))
    files["big-param-slices"] = tmp_path / "sliced.pdparams"  # how protocol 2/3 split tensors over 1 GiB
    w = np.arange(10, dtype="float32")
    with open(files["big-param-slices"], "wb") as f:
        pickle.dump({"w@@.0": w[:6], "w@@.1": w[6:], "b": w[:2],
                     "UnpackBigParamInfor@@": {"w": {"OriginShape": (2, 5), "slices": ["w@@.0", "w@@.1"]}},
                     "StructuredToParameterName@@": {"w": "linear_0.w_0", "b": "linear_0.b_0"}}, f, protocol=2)
    for path in files.values():
        for return_numpy in (False, True):
            assert_same_load(path, return_numpy)
    assert_same(load_state_dict(str(files["paddleclas-p4"])), paddle.load(str(files["paddleclas-p4"])))


# --- every way a file is loaded: one error line, exit 2, nothing run --------------------------

def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def _assert_refused(line: str, path: Path, target: str = SYSTEM):
    assert f"{path}" in line and "was not loaded" in line and target in line and "nothing in it was run" in line


def _run_copy(world: World, stage: str, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / getattr(world, stage).name
    shutil.copytree(getattr(world, stage), run)
    return run


def test_transfer_pretrained(tmp_path, marker, capsys):
    from ppadapt.apps.cli import transfer_main

    evil = write_evil(tmp_path / "evil.pdparams", touch(marker))
    args = ["--config", str(CONFIG_DIR / "digits.yaml"), "--output", str(tmp_path / "out"), "--quiet"]
    assert transfer_main(args + sum((["-o", o] for o in TINY), []) + ["--pretrained", str(evil)]) == 2
    _assert_refused(_one_error_line(capsys), evil)


def test_transfer_pretrained_script(tmp_path, marker):
    """The report of issue 11, as a user runs it: python ppadapt/transfer.py --pretrained evil.pdparams."""
    evil = write_evil(tmp_path / "evil.pdparams", touch(marker))
    proc = subprocess.run([sys.executable, str(REPO / "ppadapt" / "transfer.py"), "--config",
                           str(CONFIG_DIR / "digits.yaml"), "--output", str(tmp_path / "out"), "--quiet",
                           "--pretrained", str(evil), *sum((["-o", o] for o in TINY), [])],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    _assert_refused(lines[0], evil)


def test_paddleclas_weights(tmp_path, marker, capsys, monkeypatch):
    from ppadapt.apps.cli import transfer_main

    cache = tmp_path / "paddleclas_weights"
    monkeypatch.setattr(pretrained, "WEIGHTS_HOME", cache)
    monkeypatch.setattr(pretrained, "PADDLE_WEIGHTS_HOME", tmp_path / "paddle_weights")
    monkeypatch.setattr(pretrained, "_fetch", lambda url, dest: pytest.fail("downloaded a cached file"))
    evil = write_evil(cache / "ViT_base_patch16_224_pretrained.pdparams", touch(marker))
    small = ["model.img_size=16", "model.patch_size=4", "model.embed_dim=16", "model.depth=1",
             "model.num_heads=2", "epochs=1", "batch_size=256"]
    assert transfer_main(["--config", str(CONFIG_DIR / "digits.yaml"), "--backbone", "ViT_base_patch16_224",
                          "--output", str(tmp_path / "out"), "--quiet", *sum((["-o", o] for o in small), [])]) == 2
    _assert_refused(_one_error_line(capsys), evil)


def test_resume_adapter(tmp_path, marker, capsys):
    from ppadapt.apps.cli import transfer_main

    evil = write_evil(tmp_path / "evil_adapter.pdparams", touch(marker))
    args = ["--config", str(CONFIG_DIR / "digits.yaml"), "--output", str(tmp_path / "out"), "--quiet",
            "--pretrained", "none", "--method", "lora", "--resume-adapter", str(evil)]
    assert transfer_main(args + sum((["-o", o] for o in TINY), [])) == 2
    _assert_refused(_one_error_line(capsys), evil)


def test_predict_run_directory(world, tmp_path, marker, capsys):
    from ppadapt.apps.predict import predict_main

    run = _run_copy(world, "transfer", tmp_path)
    write_evil(run / "best.pdparams", touch(marker))
    assert predict_main(["--checkpoint", str(run), str(world.image)]) == 2
    _assert_refused(_one_error_line(capsys), run / "best.pdparams")


def test_export(world, tmp_path, marker, capsys):
    from ppadapt.apps.export import export_main

    run = _run_copy(world, "pretrain", tmp_path)
    write_evil(run / "final.pdparams", touch(marker))
    assert export_main(["--checkpoint", str(run), "--weights", "final", "--output", str(tmp_path / "exp")]) == 2
    _assert_refused(_one_error_line(capsys), run / "final.pdparams")
    assert not (tmp_path / "exp").exists()


def test_resume_checkpoint(world, tmp_path, marker, capsys):
    from ppadapt.apps.cli import train_main

    run = _run_copy(world, "pretrain", tmp_path)
    with open(run / "resume.pdckpt", "wb") as f:
        pickle.dump({"format": FORMAT, "version": 1, "stage": "pretrain", "model": touch(marker)}, f, protocol=4)
    assert train_main(["--resume", str(run)]) == 2
    line = _one_error_line(capsys)
    _assert_refused(line, run / "resume.pdckpt")
    assert line.startswith("error: resume checkpoint ")


def test_resume_checkpoint_generator_state(world, tmp_path, marker, capsys):
    """A real resume.pdckpt whose nested pickle (Paddle's generator state) is the crafted one."""
    from ppadapt.apps.cli import train_main

    run = _run_copy(world, "pretrain", tmp_path)
    state = load_checkpoint(run / "resume.pdckpt")
    state["rng"]["paddle"] = [np.frombuffer(pickle.dumps([touch(marker)]), dtype=np.uint8).copy()]
    paddle.save(state, str(run / "resume.pdckpt"))
    before = (run / "run.json").read_bytes()
    assert train_main(["--resume", str(run)]) == 2
    line = _one_error_line(capsys)
    _assert_refused(line, run / "resume.pdckpt")
    assert "Paddle generator state" in line and (run / "run.json").read_bytes() == before
