"""``recompute: true``: each block's activations recomputed in the backward (issue 14).

Tiny ViT (dim 32, depth 2). Dropout (AdaptFormer's branch, 0.1) and drop path (0.1) stay
on: the recomputed forward runs with the generator state of the first one, so training with
recomputation is bit-identical to training without it: the same gradients, the same
trainable weights after several steps, and the frozen backbone untouched.
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from ppadapt.config import load_config
from ppadapt.methods import get_method
from ppadapt.methods.trainable import set_trainable
from ppadapt.models import recompute as recompute_module
from ppadapt.models.fast_layers import use_layers
from ppadapt.training.engine import configure_training

from tiny import tiny_vit


def _model(method: str, recompute: bool, layers: str = "fast", build=tiny_vit):
    paddle.seed(0)
    model = build(drop_path_rate=0.1)
    spec = get_method(method)
    if method != "full":
        spec.apply_to(model)
    set_trainable(model, spec.is_trainable)
    use_layers(model, layers)
    model.recompute = recompute
    return model


def _train(method: str, recompute: bool, steps: int = 3, layers: str = "fast", build=tiny_vit, classes: int = 10):
    """Weights before and after ``steps`` Momentum steps, and the first step's gradients, of
    ``build(drop_path_rate=0.1)`` (a tiny ViT; ``classes`` its head's) with ``method`` applied."""
    model = _model(method, recompute, layers, build)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if not p.stop_gradient]
    opt = paddle.optimizer.Momentum(0.05, 0.9, parameters=params)
    rng = np.random.default_rng(0)
    paddle.seed(123)  # the dropout / drop path stream
    model.train()
    first = None
    for _ in range(steps):
        x = paddle.to_tensor(rng.standard_normal((4, 3, 32, 32)).astype("float32"))
        y = paddle.to_tensor(rng.integers(0, classes, (4, 1)).astype("int64"))
        paddle.nn.functional.cross_entropy(model(x), y).backward()
        if first is None:
            first = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        opt.clear_grad()
    after = {n: p.numpy() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    return before, after, first, trainable


@pytest.mark.parametrize("method", ["full", "adaptformer", "lora"])
def test_recompute_trains_bit_identically(method):
    before, plain, grads, trainable = _train(method, recompute=False)
    _, recomputed, grads_rc, _ = _train(method, recompute=True)
    assert set(grads) == set(grads_rc) == trainable  # every trainable parameter got a gradient
    for name in grads:
        assert np.array_equal(grads[name], grads_rc[name]), f"gradient of {name} differs"
    for name in plain:
        assert np.array_equal(plain[name], recomputed[name]), f"{name} differs after training"
        if name not in trainable:
            assert np.array_equal(recomputed[name], before[name]), f"frozen {name} changed"
    assert any(not np.array_equal(plain[n], before[n]) for n in trainable)  # it trained


def test_frozen_backbone_blocks_still_get_gradients():
    """PEFT users' "element 0 of tensors does not require grad": the first block's input comes from
    frozen embeddings and needs no gradient, but the branches inside the blocks do."""
    model = _model("adaptformer", recompute=True)
    model.train()
    x = paddle.randn([2, 3, 32, 32])
    model(x).sum().backward()
    branches = [p for n, p in model.named_parameters() if "adaptmlp" in n and not p.stop_gradient]
    assert branches and all(p.grad is not None for p in branches)
    assert all(p.grad is not None for p in model.blocks[0].adaptmlp.parameters())


def test_blocks_without_a_backward_are_not_recomputed(monkeypatch):
    """The linear probe: nothing before the head trains, so the blocks just run."""
    calls = []
    import paddle.distributed.fleet.utils as fleet_utils
    real = fleet_utils.recompute
    monkeypatch.setattr(fleet_utils, "recompute", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = _model("linear", recompute=True)
    model.train()
    model(paddle.randn([2, 3, 32, 32])).sum().backward()
    assert calls == [] and model.head.weight.grad is not None
    model = _model("adaptformer", recompute=True)
    model.train()
    model(paddle.randn([2, 3, 32, 32])).sum().backward()
    assert len(calls) == 2  # one per block
    model.eval()  # and never outside training
    model(paddle.randn([2, 3, 32, 32]))
    assert len(calls) == 2


def test_paddles_false_alarm_is_filtered():
    """Paddle warns each step that the first frozen block's input needs no gradient; not a problem here."""
    import logging

    recompute_module._install_filter()
    record = logging.LogRecord("x", logging.WARNING, "", 0, "[Recompute]: " + recompute_module._NOTHING_TO_DO
                               + ", therefore there is NO need to recompute this block in backward !", (), None)
    from paddle.distributed.fleet.utils.log_util import logger
    assert not logger.filter(record)


def test_recompute_key_reaches_the_model():
    model = tiny_vit()
    configure_training(model, load_config(None, ["transfer.recompute=true"]), "transfer")
    assert model.recompute is True
    configure_training(model, load_config(None, ["transfer.recompute=true"]), "pretrain")
    assert model.recompute is False
