"""Optimizers, weight decay, LR multipliers, clipping, schedules and label smoothing (issue 12),
on a tiny ViT (dim 32, depth 2) and through ``paddle.Model`` as the trainer uses them."""
import math

import numpy as np
import paddle
import pytest
from paddle.static import InputSpec
from tiny import RandomImages, tiny_vit

from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.errors import ConfigError
from ppadapt.methods.registry import get_method
from ppadapt.training.callbacks.lr_warmup import WarmupStepDecay, decay_steps, warmup_step_decay_lr
from ppadapt.training.loss import SmoothedCrossEntropy, make_loss
from ppadapt.training.optim import effective_lr, lr_callback, lr_multipliers, make_optimizer, no_weight_decay


def config(*overrides):
    """A validated config with these transfer overrides (``-o`` syntax)."""
    return load_config(None, list(overrides), stage="transfer")


def model_with(*methods, seed=0):
    paddle.seed(seed)
    model = tiny_vit()
    for name in methods:
        get_method(name).apply(model)
    return model


def values(model):
    return {n: p.numpy().copy() for n, p in model.named_parameters()}


def batch(seed=0, n=4):
    data = RandomImages(n, seed=seed)
    return paddle.to_tensor(data.images), paddle.to_tensor(data.labels)


def step_with_zero_grad(model, optimizer):
    """One optimizer step in which every gradient is zero: only weight decay moves a parameter."""
    x, _ = batch()
    (model(x).sum() * 0.0).backward()
    optimizer.step()
    optimizer.clear_grad()


def grads_then_step(model, optimizer, scale=1.0):
    """The gradients of one step (by name), then the step."""
    x, y = batch()
    (paddle.nn.CrossEntropyLoss()(model(x), y) * scale).backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    optimizer.clear_grad()
    return grads


# -- optimizers ---------------------------------------------------------------------

@pytest.mark.parametrize("name,kind", [("momentum", paddle.optimizer.Momentum), ("sgd", paddle.optimizer.SGD),
                                       ("adamw", paddle.optimizer.AdamW)])
def test_each_optimizer_trains_the_trainable_parameters_only(name, kind):
    cfg = config(f"optimizer={name}", "lr=0.05")
    model = model_with()
    method = get_method("adaptformer")
    method.apply_to(model, init="trunc_normal")  # no zero-initialised projection: every branch tensor moves
    method.mark_trainable(model)  # the backbone frozen
    optimizer = make_optimizer(model, cfg, "transfer")
    assert isinstance(optimizer, kind) and optimizer.get_lr() == 0.05
    net = paddle.Model(model, inputs=[InputSpec([None, 3, 32, 32], "float32", "image")],
                       labels=[InputSpec([None, 1], "int64", "label")])
    net.prepare(optimizer, make_loss(cfg, "transfer"))
    before = values(model)
    x, y = batch()
    net.train_batch([x.numpy()], [y.numpy()])  # as fit trains: optimizer.minimize
    after = values(model)
    moved = {n for n in before if not np.array_equal(before[n], after[n])}
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    assert moved == trainable
    assert any(n.startswith("blocks.0.adaptmlp.") for n in moved) and "head.weight" in moved


def test_defaults_build_the_original_momentum_with_l2_on_everything():
    cfg = config()
    st = cfg.transfer
    model = model_with()
    optimizer = make_optimizer(model, cfg, "transfer")
    assert type(optimizer) is paddle.optimizer.Momentum and optimizer.get_lr() == st.lr
    assert optimizer._momentum == 0.9 and optimizer._grad_clip is None
    assert (optimizer._regularization_method, optimizer._regularization_coeff) == ("l2_decay", 5e-4)
    for p in model.parameters():  # one global L2, nothing per parameter
        assert p.regularizer is None and p.optimize_attr["learning_rate"] == 1.0
    assert make_loss(cfg, "transfer").__class__ is paddle.nn.CrossEntropyLoss
    before = values(model)
    step_with_zero_grad(model, optimizer)
    for name, p in model.named_parameters():  # biases and tokens decay too, as before
        np.testing.assert_allclose(p.numpy(), before[name] * (1 - st.lr * 5e-4), rtol=1e-6)


def test_a_second_optimizer_on_the_same_model_inherits_nothing_from_the_first():
    model = model_with()
    make_optimizer(model, config("optimizer=sgd", "layer_decay=0.5", "head_lr_mult=3"), "transfer")
    assert model.head.weight.regularizer is not None and model.pos_embed.optimize_attr["learning_rate"] != 1.0
    make_optimizer(model, config(), "transfer")
    assert all(p.regularizer is None and p.optimize_attr["learning_rate"] == 1.0 for p in model.parameters())


# -- weight decay ----------------------------------------------------------------------

def test_no_decay_set_of_a_vit_with_adaptformer_lora_and_vpt():
    model = model_with("adaptformer", "lora", "vpt-deep")
    skipped = no_weight_decay(model)
    names = dict(model.named_parameters())
    for name in ("pos_embed", "cls_token", "vpt_prompts.deep", "patch_embed.proj.bias", "blocks.0.norm1.weight",
                 "blocks.0.norm1.bias", "blocks.1.mlp.fc1.bias", "blocks.0.adaptmlp.up_proj.bias", "norm.weight",
                 "head.bias"):
        assert name in skipped, name
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight",
                 "blocks.0.attn.qkv_lora.lora_A_q", "blocks.1.attn.qkv_lora.lora_B_v",
                 "blocks.0.adaptmlp.down_proj.weight", "blocks.1.adaptmlp.up_proj.weight", "head.weight"):
        assert name in names and name not in skipped, name
    # exactly: the 1-D parameters and the declared tokens and prompts
    assert skipped == {n for n, p in names.items() if len(p.shape) == 1} | {"pos_embed", "cls_token",
                                                                             "vpt_prompts.deep"}


def test_vpt_shallow_prompts_are_skipped_too():
    assert "vpt_prompts.shallow" in no_weight_decay(model_with("vpt-shallow"))


@pytest.mark.parametrize("name", ["adamw", "sgd", "momentum"])
def test_decay_shrinks_weights_by_lr_times_wd_and_leaves_the_skipped_alone(name):
    lr, wd = 0.1, 0.5
    cfg = config(f"optimizer={name}", f"lr={lr}", f"weight_decay={wd}", "no_decay=standard")
    model = model_with("vpt-shallow")
    optimizer = make_optimizer(model, cfg, "transfer")
    skipped = no_weight_decay(model)
    before = values(model)
    step_with_zero_grad(model, optimizer)  # AdamW: decoupled, p * (1 - lr * wd), the Adam step is 0
    for n, p in model.named_parameters():
        if n in skipped:
            np.testing.assert_array_equal(p.numpy(), before[n], err_msg=n)
        else:
            np.testing.assert_allclose(p.numpy(), before[n] * (1 - lr * wd), rtol=1e-6, err_msg=n)


def test_no_decay_auto_skips_for_the_new_optimizers_and_none_decays_everything():
    model = model_with()
    skipped = no_weight_decay(model)
    before = values(model)
    step_with_zero_grad(model, make_optimizer(model, config("optimizer=sgd", "weight_decay=0.5", "lr=0.1"),
                                              "transfer"))
    after = values(model)
    assert all(np.array_equal(after[n], before[n]) == (n in skipped) for n in before)
    step_with_zero_grad(model, make_optimizer(model, config("optimizer=adamw", "weight_decay=0.5", "lr=0.1",
                                                            "no_decay=none"), "transfer"))
    for n, p in model.named_parameters():  # none: biases and tokens decay as well
        np.testing.assert_allclose(p.numpy(), after[n] * 0.95, rtol=1e-6, err_msg=n)


def test_adamw_takes_betas_and_eps():
    opt = make_optimizer(model_with(), config("optimizer=adamw", "betas=[0.8, 0.95]", "eps=1e-6"), "transfer")
    assert (opt._beta1, opt._beta2, opt._epsilon) == (0.8, 0.95, 1e-6)


# -- LR scaling and multipliers ---------------------------------------------------------

def test_linear_lr_scaling_uses_the_batch_of_all_processes():
    cfg = config("lr_scale=linear256", "lr=0.1", "batch_size=32", "min_lr=0.001")
    assert effective_lr(cfg.transfer, nranks=1) == pytest.approx(0.1 * 32 / 256)
    assert effective_lr(cfg.transfer, nranks=4) == pytest.approx(0.1 * 128 / 256)
    assert effective_lr(cfg.transfer) == pytest.approx(0.1 * 32 / 256)  # one process here
    assert make_optimizer(model_with(), cfg, "transfer", nranks=4).get_lr() == pytest.approx(0.05)
    sched = lr_callback(cfg, "transfer", steps_per_epoch=5, nranks=4)
    assert sched.base_lr == pytest.approx(0.05) and sched.min_lr == 0.001
    assert effective_lr(config("lr=0.1", "batch_size=32").transfer, nranks=8) == 0.1  # off by default
    with pytest.raises(ConfigError, match=r"^transfer.min_lr \(0.02\) is above the learning rate 0.0125"):
        lr_callback(config("lr_scale=linear256", "lr=0.1", "batch_size=32", "min_lr=0.02"), "transfer", 5, nranks=1)


def test_layer_decay_and_head_multipliers_for_depth_2():
    model = model_with("adaptformer")
    mult = lr_multipliers(model, config("layer_decay=0.5", "head_lr_mult=10").transfer)
    expected = {"pos_embed": 0.125, "cls_token": 0.125, "patch_embed.proj.weight": 0.125,
                "blocks.0.attn.qkv.weight": 0.25, "blocks.0.adaptmlp.down_proj.weight": 0.25,
                "blocks.1.norm2.bias": 0.5, "norm.weight": 1.0, "head.weight": 10.0, "head.bias": 10.0}
    assert {n: mult[n] for n in expected} == expected
    assert set(lr_multipliers(model, config().transfer).values()) == {1.0}


def test_multipliers_scale_each_update_and_compose_with_set_lr():
    cfg = config("optimizer=sgd", "weight_decay=0", "layer_decay=0.5", "head_lr_mult=10", "lr=0.1")
    model = model_with()
    optimizer = make_optimizer(model, cfg, "transfer")
    mult = lr_multipliers(model, cfg.transfer)
    optimizer.set_lr(2.0)  # what the schedule callbacks do every batch
    before = values(model)
    grads = grads_then_step(model, optimizer)
    for n, p in model.named_parameters():  # atol: two float32 roundings of the parameter's own size
        atol = 2 * np.finfo("float32").eps * float(np.abs(before[n]).max())
        np.testing.assert_allclose(before[n] - p.numpy(), 2.0 * mult[n] * grads[n], rtol=1e-3, atol=atol,
                                   err_msg=n)


def test_layer_decay_needs_a_model_that_numbers_its_layers():
    class Plain(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(2, 2)

    with pytest.raises(ConfigError, match="layer_decay needs a model that numbers its layers"):
        make_optimizer(Plain(), config("layer_decay=0.5"), "transfer")


# -- clipping -------------------------------------------------------------------------------

def test_clipping_bounds_the_global_norm_over_all_parameters():
    cfg = config("optimizer=sgd", "weight_decay=0", "lr=1.0", "clip_grad_norm=0.01", "head_lr_mult=4")
    model = model_with()
    optimizer = make_optimizer(model, cfg, "transfer")
    before = values(model)
    grads = grads_then_step(model, optimizer, scale=100.0)
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert norm > 1.0  # far above the bound
    mult = lr_multipliers(model, cfg.transfer)
    clipped = [(before[n] - p.numpy()) / mult[n] for n, p in model.named_parameters()]  # lr 1: the clipped grads
    assert math.sqrt(sum(float((c.astype("float64") ** 2).sum()) for c in clipped)) == pytest.approx(0.01, rel=1e-3)
    for n, p in model.named_parameters():  # one global scale: every gradient keeps its direction and share
        atol = 2 * np.finfo("float32").eps * float(np.abs(before[n]).max())
        np.testing.assert_allclose(before[n] - p.numpy(), mult[n] * grads[n] * 0.01 / norm, rtol=2e-3,
                                   atol=atol, err_msg=n)


# -- schedules --------------------------------------------------------------------------

def test_warmup_in_epochs_equals_the_same_warmup_in_steps():
    by_epochs = lr_callback(config("warmup_steps=null", "warmup_epochs=1.5", "epochs=4",
                                   "schedule=warmup_step_cosine"), "transfer", 4)
    by_steps = lr_callback(config("warmup_steps=6", "epochs=4", "schedule=warmup_step_cosine"), "transfer", 4)
    assert by_epochs.warmup_steps == 6
    assert [by_epochs._lr_at(s, s // 4) for s in range(16)] == [by_steps._lr_at(s, s // 4) for s in range(16)]
    assert lr_callback(config("warmup_steps=null"), "transfer", 4).warmup_steps == 0  # neither: no warm-up
    epoch_cosine = lr_callback(config("warmup_steps=null", "warmup_epochs=0.5"), "transfer", 10)
    assert epoch_cosine.warmup_steps == 5


def test_step_decay_values_at_the_boundaries():
    lr = lambda step, **kw: warmup_step_decay_lr(0.1, step, **{"warmup_steps": 0, "total_steps": 100, **kw})  # noqa
    assert decay_steps(100, [0.3, 0.6, 0.9]) == [30, 60, 90]
    assert [lr(s) for s in (0, 29)] == [0.1, 0.1]
    assert lr(30) == pytest.approx(0.01, rel=1e-12) and lr(59) == pytest.approx(0.01, rel=1e-12)
    assert lr(60) == pytest.approx(0.001, rel=1e-12) and lr(89) == pytest.approx(0.001, rel=1e-12)
    assert lr(90) == pytest.approx(1e-4, rel=1e-12) and lr(500) == pytest.approx(1e-4, rel=1e-12)
    assert lr(95, min_lr=5e-4) == 5e-4 and lr(60, min_lr=5e-4) == pytest.approx(1e-3)  # min_lr is a floor
    assert lr(30, decay_factor=0.5) == pytest.approx(0.05) and lr(45, decay_at=[0.5]) == 0.1
    assert lr(0, warmup_steps=10) == pytest.approx(0.01) and lr(9, warmup_steps=10) == pytest.approx(0.1)
    assert lr(10, warmup_steps=10) == 0.1
    for bad in (dict(decay_at=[0.6, 0.3]), dict(decay_at=[0.0, 0.5]), dict(decay_factor=0.0)):
        with pytest.raises(ValueError):
            lr(0, **bad)
        with pytest.raises(ValueError):  # checked even while warming up
            WarmupStepDecay(0.1, 10, 100, **bad)


def test_step_decay_schedule_from_the_config():
    sched = lr_callback(config("schedule=step_decay", "decay_at=[0.25, 0.5]", "decay_factor=0.5", "epochs=2",
                               "lr=0.2", "warmup_steps=2"), "transfer", 4)
    assert isinstance(sched, WarmupStepDecay)
    assert [sched._lr_at(s, 0) for s in range(8)] == pytest.approx([0.1, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])


class LRRecorder(paddle.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.lrs = []

    def on_train_batch_end(self, step, logs=None):
        self.lrs.append(self.model._optimizer.get_lr())


def fit(model, callbacks, epochs):
    model.fit(RandomImages(12), batch_size=4, epochs=epochs, verbose=0, callbacks=callbacks)  # 3 steps an epoch


def test_step_decay_resumes_where_it_stopped():
    def prepared():
        paddle.seed(0)
        net = tiny_vit()
        model = paddle.Model(net, inputs=[InputSpec([None, 3, 32, 32], "float32", "image")],
                             labels=[InputSpec([None, 1], "int64", "label")])
        model.prepare(make_optimizer(net, config("optimizer=adamw", "lr=0.1"), "transfer"),
                      paddle.nn.CrossEntropyLoss())
        return model

    make = lambda: WarmupStepDecay(0.1, warmup_steps=1, total_steps=9, decay_at=[0.3, 0.6], decay_factor=0.1)  # noqa
    whole, rec_whole = make(), LRRecorder()
    fit(prepared(), [whole, rec_whole], epochs=3)
    first = make()
    fit(prepared(), [first], epochs=2)
    resumed, rec = make(), LRRecorder()
    resumed.set_state_dict(first.state_dict())
    fit(prepared(), [resumed, rec], epochs=1)
    assert rec.lrs == rec_whole.lrs[6:] == [pytest.approx(1e-3)] * 3
    assert rec_whole.lrs[:6] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001])  # boundaries: round(2.7), round(5.4)
    assert resumed.state_dict() == whole.state_dict() == {"global_step": 9, "epoch": 3}


# -- label smoothing ----------------------------------------------------------------------

def test_label_smoothing_against_a_hand_computation():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], "float32")
    labels = np.array([[0], [2]], "int64")
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    eps, k = 0.1, 3
    targets = np.full((2, k), eps / k)
    targets[0, 0] += 1 - eps
    targets[1, 2] += 1 - eps
    expected = -(targets * logp).sum(axis=1).mean()
    loss = make_loss(config("label_smoothing=0.1"), "transfer")
    assert isinstance(loss, SmoothedCrossEntropy)
    assert float(loss(paddle.to_tensor(logits), paddle.to_tensor(labels))) == pytest.approx(expected, rel=1e-6)
    # soft targets (what MixUp passes) take the same smoothing
    soft = np.array([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]], "float32")
    expected_soft = -(((1 - eps) * soft + eps / k) * logp).sum(axis=1).mean()
    assert float(loss(paddle.to_tensor(logits), paddle.to_tensor(soft))) == pytest.approx(expected_soft, rel=1e-6)
    # no smoothing: Paddle's cross-entropy
    plain = -logp[[0, 1], [0, 2]].mean()
    assert float(SmoothedCrossEntropy(0.0)(paddle.to_tensor(logits), paddle.to_tensor(labels))) == \
        pytest.approx(plain, rel=1e-6)
    assert float(make_loss(config(), "transfer")(paddle.to_tensor(logits), paddle.to_tensor(labels))) == \
        pytest.approx(plain, rel=1e-6)


# -- bad values -----------------------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("optimizer=adam", "transfer.optimizer must be one of momentum, sgd, adamw, got 'adam'"),
    ("no_decay=biases", "transfer.no_decay must be one of auto, standard, none"),
    ("lr_scale=sqrt", "transfer.lr_scale must be one of none, linear256"),
    ("clip_grad_norm=-1", "transfer.clip_grad_norm must be positive, got -1.0 (e.g. 1.0, or null for no clipping)"),
    ("clip_grad_norm=0", "transfer.clip_grad_norm must be positive"),
    ("warmup_epochs=1", "transfer.warmup_steps (2000) and transfer.warmup_epochs (1.0) are both set: give one"),
    ("warmup_epochs=-1", "transfer.warmup_steps (2000) and transfer.warmup_epochs"),
    ("decay_at=[0.6, 0.3]", "transfer.decay_at must be increasing fractions of the run in (0, 1)"),
    ("decay_at=[0.3, 0.3]", "transfer.decay_at must be increasing"),
    ("decay_at=[0.5, 1.0]", "transfer.decay_at must be increasing fractions of the run in (0, 1)"),
    ("decay_at=[0, 0.5]", "transfer.decay_at must be increasing"),
    ("decay_factor=0", "transfer.decay_factor must be in (0, 1]"),
    ("decay_factor=2", "transfer.decay_factor must be in (0, 1]"),
    ("label_smoothing=1", "transfer.label_smoothing must be in [0, 1), got 1.0"),
    ("label_smoothing=-0.1", "transfer.label_smoothing must be in [0, 1)"),
    ("layer_decay=0", "transfer.layer_decay must be in (0, 1]"),
    ("layer_decay=1.5", "transfer.layer_decay must be in (0, 1]"),
    ("head_lr_mult=0", "transfer.head_lr_mult must be positive"),
    ("betas=[0.9]", "transfer.betas must be two numbers in [0, 1)"),
    ("betas=[0.9, 1.0]", "transfer.betas must be two numbers in [0, 1)"),
    ("eps=0", "transfer.eps must be positive"),
    ("min_lr=0.5", "transfer.min_lr (0.5) must not exceed transfer.lr (0.01)"),
    ("optimizer=[adamw]", "transfer.optimizer must be str"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        config(override)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_warmup_epochs_with_warmup_steps_null_and_shipped_configs():
    cfg = config("warmup_steps=null", "warmup_epochs=2")
    assert (cfg.transfer.warmup_steps, cfg.transfer.warmup_epochs) == (None, 2.0)
    with pytest.raises(ConfigError, match=r"warmup_epochs must not be negative"):
        config("warmup_steps=null", "warmup_epochs=-1")
    with pytest.raises(ConfigError, match=r"-o transfer.warmup_steps=null"):
        load_config(CONFIG_DIR / "digits.yaml", ["warmup_epochs=1"], stage="transfer")


# -- a whole run ------------------------------------------------------------------------------

def test_a_run_with_every_option_resumes_bit_identical(tmp_path):
    """train.py with AdamW, step decay, warm-up in epochs, LR scaling, layer decay, a head
    multiplier, clipping and label smoothing, killed in epoch 3 and resumed, ends exactly as
    the uninterrupted run (optimizer moments, schedule position and multipliers come back)."""
    import json
    import signal

    from cifar_archive import write_cifar_archive
    from test_resume import RUN, TINY, assert_bit_identical, history, start_paused, train, weights

    archive = write_cifar_archive(tmp_path / "data" / "cifar-10-python.tar.gz", "cifar10",
                                  train_per_class=6, test_per_class=2)
    options = [a for o in ("optimizer=adamw", "lr=0.004", "lr_scale=linear256", "weight_decay=0.05",
                                  "betas=[0.9, 0.99]", "schedule=step_decay", "decay_at=[0.4, 0.8]",
                                  "warmup_steps=null", "warmup_epochs=0.5", "layer_decay=0.75",
                                  "head_lr_mult=2", "clip_grad_norm=1.0", "label_smoothing=0.1") for a in ("-o", o)]
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ref = train("--pretrain", "cifar10", "--data-file", archive, "--output", ref_out, *TINY, *options)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "learning rate 0.004 x batch 16 x 1 process(es) / 256 (linear256): 0.00025" in ref.stdout
    recorded = json.loads((ref_out / RUN / "run.json").read_text())["config"]["pretrain"]
    assert (recorded["optimizer"], recorded["decay_at"], recorded["warmup_steps"]) == ("adamw", [0.4, 0.8], None)

    args = ["--pretrain", "cifar10", "--data-file", archive, "--output", out, *TINY, *options]
    proc = start_paused(args, "2:1", tmp_path / "marker")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    resumed = train(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert_bit_identical(weights(ref_out / RUN), weights(out / RUN))
    assert history(out / RUN) == history(ref_out / RUN)
