"""Stochastic depth under a frozen backbone: ``-o model.drop_path_rate=0.1`` (issue 12).

Drop path drops whole residual branches of the (frozen) blocks per sample while training,
so it regularises a PEFT method too; it never changes a frozen tensor."""
import numpy as np
import paddle
import pytest

from ppadapt.apps.cli import use_backbone
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.methods.build import apply_transfer_method, build_model
from ppadapt.models.vit import DropPath

METHODS = {"adaptformer": ["transfer.freeze=true"], "lora": ["method.name=lora"]}


def frozen_model(method, rate=0.1):
    cfg = load_config(CONFIG_DIR / "digits.yaml", [f"model.drop_path_rate={rate}"] + METHODS[method],
                      stage="transfer")
    assert cfg.model.drop_path_rate == rate
    paddle.seed(0)
    model = build_model(cfg, 5)
    apply_transfer_method(model, cfg)
    return model


def test_the_rate_reaches_the_blocks_linearly():
    model = frozen_model("lora")
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for b in model.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.1, len(model.blocks)))  # the first block: none
    assert all(isinstance(b.drop_path, paddle.nn.Identity) for b in frozen_model("lora", rate=0.0).blocks)


@pytest.mark.parametrize("method", list(METHODS))
def test_active_in_training_under_a_frozen_method_and_frozen_tensors_stay_bit_identical(method):
    model = frozen_model(method)
    x = paddle.randn([32, 3, 16, 16])
    y = paddle.randint(0, 5, [32, 1])
    model.eval()
    with paddle.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())
    model.train()
    with paddle.no_grad():
        assert not np.array_equal(model(x).numpy(), model(x).numpy())
        control = frozen_model(method, rate=0.0).train()  # the same in training without drop path
        np.testing.assert_array_equal(control(x).numpy(), control(x).numpy())

    trainable = [p for p in model.parameters() if not p.stop_gradient]
    frozen = {n: p.numpy().copy() for n, p in model.named_parameters() if p.stop_gradient}
    before = {n: p.numpy().copy() for n, p in model.named_parameters() if not p.stop_gradient}
    assert frozen and trainable
    opt = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=trainable)
    loss = paddle.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.clear_grad()
    after = dict(model.named_parameters())
    assert all(np.array_equal(after[n].numpy(), v) for n, v in frozen.items())
    assert any(not np.array_equal(after[n].numpy(), v) for n, v in before.items() if not n.startswith("head."))


def test_kept_over_a_backbone():
    overrides = ["model.drop_path_rate=0.1"]
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", overrides, stage="transfer")
    use_backbone(cfg, "DeiT_tiny_patch16_224", overrides)
    assert cfg.model.drop_path_rate == 0.1 and cfg.model.embed_dim == 192
