"""Device and mixed precision (issue 14): the config plumbing, the one-line errors, float32
checkpoints and trainables under O2, and float16 loss scaling that resumes exactly.

This machine has no GPU and, in this Paddle, ``paddle.amp.auto_cast`` does nothing on the
CPU (the bfloat16 probe says so). What needs a GPU is exercised on the CPU where it can be:
O2's decoration runs with Paddle told it is on a GPU (it casts on the CPU just the same), and
the float16 loss scaler is built as on a GPU and scales float32 training, which a scale that
is a power of two leaves exact. ``tools/gpu_check.sh`` runs the real thing on a GPU.
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import paddle
import pytest

from ppadapt.apps.cli import train_main
from ppadapt.config import load_config
from ppadapt.errors import ConfigError
from ppadapt.methods import get_method
from ppadapt.methods.groups import parameter_groups
from ppadapt.methods.trainable import set_trainable
from ppadapt.runs.adapter_file import read_adapter, save_adapter
from ppadapt.runs.checkpoint import load_state_dict, save_state_dict
from ppadapt.training import engine, precision, resume
from ppadapt.training.precision import AmpSpec, ScaledModel, float32_parameters, make_network, use_amp
from ppadapt.utils import device

from cifar_archive import write_cifar_archive
from tiny import tiny_vit

TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8",
        "model.carry.adaptformer.bottleneck=8", "warmup_steps=2", "batch_size=16", "log_freq=1"]


# --- configuration ---------------------------------------------------------------------

def test_amp_keys_parse_and_yaml_off_means_off(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("device: cpu\nmodel: {layers: native}\npretrain: {amp: off}\n"
                    "transfer: {amp: O2, amp_dtype: bfloat16, recompute: true}\n")
    cfg = load_config(path)
    assert (cfg.device, cfg.model.layers, cfg.pretrain.amp) == ("cpu", "native", "off")
    assert (cfg.transfer.amp, cfg.transfer.amp_dtype, cfg.transfer.recompute) == ("O2", "bfloat16", True)
    cfg = load_config(None, ["amp=off", "transfer.amp=O1"], stage="pretrain")
    assert (cfg.pretrain.amp, cfg.transfer.amp, cfg.transfer.amp_dtype) == ("off", "O1", "float16")
    assert load_config(None, []).device == "auto"


@pytest.mark.parametrize("override, message", [
    ("transfer.amp=O3", "transfer.amp must be one of off, O1, O2, got 'O3' (e.g. -o transfer.amp=O1)"),
    ("transfer.amp_dtype=fp16", "transfer.amp_dtype must be one of float16, bfloat16, got 'fp16'"),
    ("device=tpu", "device must be one of auto, cpu, gpu, got 'tpu'"),
    ("transfer.recompute=maybe", "transfer.recompute must be bool, got 'maybe' (give true or false)"),
])
def test_bad_values_are_one_line_with_the_fix(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_the_device_flag_is_in_the_flag_table():
    from ppadapt.config.flags import FLAGS
    assert any(f.dest == "device" and f.key == "device" for f in FLAGS)


# --- what this machine can run ---------------------------------------------------------

def test_cpu_bfloat16_probe_answers_once():
    supported, why = device.cpu_bfloat16_support()
    assert isinstance(supported, bool) and (supported or why)
    assert device.cpu_bfloat16_support() == (supported, why)
    assert device.cpu_bfloat16_support.cache_info().hits >= 1
    assert paddle.device.get_device().startswith("cpu")  # the probe leaves the device as it was


def test_amp_checks_on_the_cpu(monkeypatch):
    device.check_amp("transfer", "off", "float16", "cpu")  # float32: nothing to check
    with pytest.raises(ConfigError, match=r"^transfer.amp O1 in float16 needs a GPU: .*--device gpu.*"
                                          r"-o transfer.amp=off\)$"):
        device.check_amp("transfer", "O1", "float16", "cpu")
    monkeypatch.setattr(device, "cpu_bfloat16_support", lambda: (False, "no bfloat16 matmul"))
    with pytest.raises(ConfigError) as exc:
        device.check_amp("pretrain", "O2", "bfloat16", "cpu")
    assert str(exc.value) == (f"pretrain.amp O2 in bfloat16 is not supported on the CPU by this Paddle "
                              f"({paddle.__version__}: no bfloat16 matmul); set -o pretrain.amp=off (float32), "
                              "or train on a GPU with --device gpu")
    monkeypatch.setattr(device, "cpu_bfloat16_support", lambda: (True, ""))
    device.check_amp("pretrain", "O2", "bfloat16", "cpu")


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="the GPU build")
def test_gpu_on_the_cpu_build_is_one_line():
    assert device.resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match=r"^--device gpu: this Paddle \(.*\) is the CPU build; install the GPU "
                                          r"build \(.*pip install paddlepaddle-gpu==.*\) or train with --device cpu$"):
        device.resolve_device("gpu")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_cifar_archive(tmp_path_factory.mktemp("data") / "cifar-10-python.tar.gz", "cifar10",
                               train_per_class=6, test_per_class=2)


@pytest.mark.parametrize("args", [["-o", "amp=O1"], ["--device", "gpu"]])
def test_train_py_refuses_before_writing_anything(args, archive, tmp_path, capsys, monkeypatch):
    if args[0] == "--device" and paddle.is_compiled_with_cuda():
        pytest.skip("the GPU build")
    monkeypatch.setattr(device, "cpu_bfloat16_support", lambda: (False, "not in this build"))
    out = tmp_path / "out"
    argv = ["--pretrain", "cifar10", "--data-file", str(archive), "--output", str(out), "--quiet"]
    for item in TINY:
        argv += ["-o", item]
    assert train_main(argv + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--device" in err[0]
    assert not out.exists()


@pytest.mark.skipif(not device.cpu_bfloat16_support()[0], reason="this Paddle build has no bfloat16 on the CPU: "
                    + device.cpu_bfloat16_support()[1])
def test_a_bfloat16_training_step_on_the_cpu():
    paddle.seed(0)
    model = tiny_vit()
    opt = paddle.optimizer.Momentum(0.1, parameters=model.parameters())
    net, opt = make_network(model, opt, AmpSpec("O1", "bfloat16"), inputs=None, labels=None)
    net.prepare(opt, paddle.nn.CrossEntropyLoss())
    loss = net.train_batch([np.random.rand(4, 3, 32, 32).astype("float32")], [np.zeros((4, 1), "int64")])
    assert np.isfinite(loss[0]).all() and all(p.dtype == paddle.float32 for p in model.parameters())


# --- O2: trainables and checkpoints in float32 -----------------------------------------

@pytest.fixture
def pretend_gpu(monkeypatch):
    """``paddle.amp.decorate`` does nothing on the CPU; told it is on a GPU, it casts just the same."""
    module = sys.modules["paddle.amp.auto_cast"]

    class Place:
        is_gpu_place = staticmethod(lambda: True)
        is_xpu_place = is_custom_place = staticmethod(lambda: False)

    class Tracer:
        _expected_place = Place()

    monkeypatch.setattr(module, "_dygraph_tracer", lambda: Tracer())
    monkeypatch.setattr(module, "_is_gpu_float16_supported", lambda: True)
    monkeypatch.setattr(module, "_is_gpu_bfloat16_supported", lambda: True)


def _o2_model(method: str, dtype: str):
    paddle.seed(0)
    model = tiny_vit(head="bn_linear", qkv_bias=True)
    spec = get_method(method)
    if method != "full":
        spec.apply_to(model)
    set_trainable(model, spec.is_trainable)
    opt = paddle.optimizer.Momentum(0.1, parameters=[p for p in model.parameters() if not p.stop_gradient])
    keep = float32_parameters(parameter_groups(model, method))
    return model, use_amp(model, opt, AmpSpec("O2", dtype), keep)


@pytest.mark.parametrize("method", ["adaptformer", "lora", "bitfit", "vpt-deep", "full"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_o2_keeps_the_methods_parameters_and_the_head_in_float32(pretend_gpu, method, dtype):
    model, opt = _o2_model(method, dtype)
    assert model.amp == ("O2", dtype) and opt._multi_precision  # backbone weights that train: a float32 master
    low = getattr(paddle, dtype)
    params = dict(model.named_parameters())
    trainable_low = [n for n, p in params.items() if not p.stop_gradient and p.dtype != paddle.float32]
    if method == "full":  # the backbone trains in amp_dtype with master weights; the head stays float32
        assert trainable_low and not any(n.startswith("head.") for n in trainable_low)
    else:
        assert trainable_low == []
    assert any(p.dtype == low for p in params.values())  # frozen weights: the memory O2 saves
    assert model.head.norm._mean.dtype == paddle.float32  # the head's BatchNorm statistics


def test_o2_checkpoints_stay_float32(pretend_gpu, tmp_path):
    """best/final (the state dict), the adapter folder and the resume checkpoint's model."""
    model, _ = _o2_model("adaptformer", "float16")
    assert Counter(str(p.dtype) for p in model.parameters())["paddle.float16"] > 0
    state = model.state_dict()
    assert all(v.dtype == paddle.float32 for v in state.values())
    for name in ("best.pdparams", "final.safetensors"):
        save_state_dict(state, tmp_path / name)
        assert all(np.asarray(v).dtype == np.float32 for v in load_state_dict(tmp_path / name).values())
    save_adapter(model, tmp_path / "adapter", {"method": "adaptformer"})
    tensors, _ = read_adapter(tmp_path / "adapter")
    assert tensors and all(np.asarray(v).dtype == np.float32 for v in tensors.values())
    assert all(v.dtype == np.float32 for v in resume._numpy_state(model.state_dict()).values())


def test_master_weights_go_through_the_resume_checkpoint_as_tensors():
    saved = resume._numpy_state({"w_velocity_0": paddle.ones([2]), "master_weights": {"w": paddle.ones([2])}})
    assert isinstance(saved["master_weights"]["w"], np.ndarray)
    renamed = resume.remap_optimizer_state(saved, {"blocks.0.w": "w"}, _Named({"blocks.0.w": "w2"}))
    assert set(renamed) == {"w2_velocity_0", "master_weights"} and set(renamed["master_weights"]) == {"w2"}
    back = resume.master_weights_as_tensors(renamed)
    assert isinstance(back["master_weights"]["w2"], paddle.Tensor) and back["master_weights"]["w2"].dtype == paddle.float32


class _Named:
    def __init__(self, names):
        self.names = names

    def named_parameters(self):
        return [(k, type("P", (), {"name": v})()) for k, v in self.names.items()]


# --- float16 loss scaling ----------------------------------------------------------------

def _cpu_scaler(**kwargs) -> paddle.amp.GradScaler:
    """Paddle's GradScaler as it is on a GPU (on the CPU Paddle builds it disabled)."""
    module = sys.modules["paddle.amp.grad_scaler"]
    real = module._dygraph_tracer

    class Place:
        is_gpu_place = staticmethod(lambda: True)
        is_xpu_place = is_custom_place = staticmethod(lambda: False)

    module._dygraph_tracer = lambda: type("T", (), {"_expected_place": Place()})()
    try:
        return paddle.amp.GradScaler(**kwargs)
    finally:
        module._dygraph_tracer = real


def _losses(scaled: bool, steps: int = 4) -> tuple[list[float], dict]:
    paddle.seed(0)
    model = tiny_vit()
    opt = paddle.optimizer.Momentum(0.1, 0.9, parameters=model.parameters())
    if scaled:
        model.amp = ("O1", "float16")  # auto_cast does nothing on the CPU, but marks float16 for the scaler
        net = ScaledModel(model, scaler=_cpu_scaler(init_loss_scaling=2.0 ** 10, incr_every_n_steps=2))
    else:
        net = paddle.Model(model)
    net.prepare(opt, paddle.nn.CrossEntropyLoss())
    rng = np.random.default_rng(0)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            x = rng.standard_normal((4, 3, 32, 32)).astype("float32")
            y = rng.integers(0, 10, (4, 1)).astype("int64")
            losses.append(float(net.train_batch([x], [y])[0]))
    return losses, precision.scaler_state(net)


def test_loss_scaling_by_a_power_of_two_trains_exactly_as_float32():
    plain, none = _losses(scaled=False)
    scaled, state = _losses(scaled=True)
    assert none == {}
    assert plain == scaled and plain[0] != plain[-1]
    assert float(state["scale"][0]) == 2.0 ** 12 and state["incr_count"] == 0  # doubled every 2 good steps


def test_amp_resume_restores_the_loss_scaler_and_the_weights(archive, tmp_path, monkeypatch):
    """float16 O1, stopped after epoch 2 of 4 and resumed: the same weights and loss-scaler state."""
    monkeypatch.setattr(engine, "check_amp", lambda *a: None)
    monkeypatch.setattr(precision, "make_scaler",
                        lambda spec: _cpu_scaler(init_loss_scaling=2.0 ** 8, incr_every_n_steps=3))
    warnings.simplefilter("ignore")

    def config(out: Path):
        return load_config(None, [*TINY, "pretrain.dataset=cifar10", f"pretrain.data_file={archive}",
                                  "pretrain.epochs=4", "pretrain.amp=O1", f"output={out}"], stage="pretrain")

    class StopAfter(paddle.callbacks.Callback):  # as if killed once epoch 2 was evaluated and saved
        def on_epoch_begin(self, epoch=None, logs=None):
            if epoch == 2:
                raise _Stop()

    ref = engine.run_stage(config(tmp_path / "ref"), "pretrain", log=lambda line: None, verbose=0)
    with pytest.raises(_Stop):
        engine.run_stage(config(tmp_path / "run"), "pretrain", log=lambda line: None, verbose=0,
                         callbacks=[StopAfter()])
    run_dir = tmp_path / "run" / ref.run_dir.name
    half = paddle.load(str(run_dir / "resume.pdckpt"), return_numpy=True)
    assert half["epoch"] == 2 and float(half["amp_scaler"]["scale"][0]) > 2.0 ** 8  # it has grown
    engine.run_stage(config(tmp_path / "run"), "pretrain", log=lambda line: None, verbose=0, resume=True)
    a = paddle.load(str(ref.run_dir / "final.pdparams"), return_numpy=True)
    b = paddle.load(str(run_dir / "final.pdparams"), return_numpy=True)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert all(np.asarray(v).dtype == np.float32 for v in b.values())
    end_ref = paddle.load(str(ref.run_dir / "resume.pdckpt"), return_numpy=True)["amp_scaler"]
    end = paddle.load(str(run_dir / "resume.pdckpt"), return_numpy=True)["amp_scaler"]
    assert {k: np.asarray(v).tolist() for k, v in end.items()} == {k: np.asarray(v).tolist() for k, v in end_ref.items()}


class _Stop(Exception):
    pass


def test_device_flag_of_the_tools():
    from ppadapt.apps.cli import _common_parser, load_tool_config
    from ppadapt.apps.tune import build_parser

    args = _common_parser("train.py", "").parse_args(["--device", "cpu"])
    assert load_tool_config(args, "pretrain", None).device == "cpu"
    assert build_parser().parse_args(["--device", "gpu"]).device == "gpu"
    with pytest.raises(SystemExit):
        _common_parser("train.py", "").parse_args(["--device", "tpu"])
