"""Adapter-only checkpoints: backbone + adapter file == the full tuned model."""
import numpy as np
import paddle
import pytest

from ppadapt.runs.adapter_file import load_adapter, read_adapter, save_adapter
from ppadapt.errors import CheckpointError
from ppadapt.methods.trainable import set_trainable
from ppadapt.methods import get_method

from tiny import tiny_vit


def _tuned(method_name, backbone_state, seed, **options):
    paddle.seed(seed)
    model = tiny_vit()
    model.set_state_dict(backbone_state)
    method = get_method(method_name)
    method.apply_to(model, **options)
    set_trainable(model, method.is_trainable)
    return model, method


@pytest.mark.parametrize("name,options", [("lora", {"rank": 4}), ("adaptformer", {"bottleneck": 8}),
                                          ("vpt-deep", {"tokens": 3}), ("bitfit", {})])
def test_backbone_plus_adapter_file_gives_the_full_models_logits(tmp_path, name, options):
    paddle.seed(0)
    backbone = {k: v.clone() for k, v in tiny_vit().state_dict().items()}
    tuned, method = _tuned(name, backbone, seed=1, **options)
    for p in tuned.parameters():  # stand-in for training: move every trainable tensor
        if not p.stop_gradient:
            p.set_value(p + paddle.randn(p.shape) * 0.05)
    path = tmp_path / "adapter.pdparams"
    save_adapter(tuned, path, {"method": name, "options": options})
    paddle.save(tuned.state_dict(), str(tmp_path / "full.pdparams"))

    fresh, _ = _tuned(name, backbone, seed=2, **options)  # other random init for the method's tensors
    assert load_adapter(fresh, path, method=name)["options"] == options
    tuned.eval(), fresh.eval()
    x = paddle.randn([2, 3, 32, 32])
    np.testing.assert_array_equal(tuned(x).numpy(), fresh(x).numpy())
    tensors, _ = read_adapter(path)
    assert set(tensors) == {n for n, p in tuned.named_parameters() if not p.stop_gradient}
    assert (tmp_path / "adapter.pdparams").stat().st_size < (tmp_path / "full.pdparams").stat().st_size


def test_adapter_file_for_another_method_or_shape_is_refused(tmp_path):
    backbone = tiny_vit().state_dict()
    tuned, _ = _tuned("lora", backbone, seed=0, rank=4)
    path = tmp_path / "a.pdparams"
    save_adapter(tuned, path, {"method": "lora", "options": {"rank": 4}})
    other, _ = _tuned("lora", backbone, seed=0, rank=2)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_adapter(other, path, method="lora")
    with pytest.raises(CheckpointError, match="holds a 'lora' adapter"):
        load_adapter(other, path, method="ssf")
    paddle.save(backbone, str(tmp_path / "plain.pdparams"))
    with pytest.raises(CheckpointError, match="not an adapter file"):
        read_adapter(tmp_path / "plain.pdparams")
