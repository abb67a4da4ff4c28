"""Freezing is per parameter and survives real optimizer steps in paddle.Model.fit."""
import numpy as np
import paddle
from paddle.static import InputSpec

from ppadapt.methods.build import apply_freezing
from ppadapt.methods.trainable import count_parameters, set_trainable, trainable_parameters
from ppadapt.methods import AdaptFormerConfig, apply_adaptformer
from ppadapt.models import VisionTransformer, ViTConfig

TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, qkv_bias=True)


class RandomImages(paddle.io.Dataset):
    def __init__(self, n=48, classes=4, seed=0):
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, classes, size=(n, 1)).astype("int64")
        self.x = (rng.normal(size=(n, 3, 32, 32)) + self.y[:, :, None, None]).astype("float32")

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _fit(model, epochs=2):
    net = paddle.Model(model, [InputSpec([None, 3, 32, 32], "float32", "image")], [InputSpec([None, 1], "int64", "label")])
    opt = paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=trainable_parameters(model),
                                    weight_decay=paddle.regularizer.L2Decay(5e-4))
    net.prepare(opt, paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    net.fit(RandomImages(), epochs=epochs, batch_size=16, verbose=0)


def test_frozen_parameters_bit_identical_after_fit_and_trainable_ones_moved():
    paddle.seed(0)
    model = VisionTransformer(TINY, class_num=4)
    apply_adaptformer(model, AdaptFormerConfig(bottleneck=8, learnable_scale=True))
    apply_freezing(model, freeze=True)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    assert trainable == {n for n in before if ".adaptmlp." in n or n.startswith("head.")}

    _fit(model)
    after = {k: v.numpy() for k, v in model.state_dict().items()}
    frozen = [n for n in before if n not in trainable]
    assert len(frozen) > 20
    for name in frozen:
        assert np.array_equal(before[name], after[name]), f"frozen {name} changed"
    for name in trainable:
        assert not np.array_equal(before[name], after[name]), f"trainable {name} did not move"


def test_full_fine_tuning_moves_everything():
    paddle.seed(0)
    model = VisionTransformer(TINY, class_num=4)
    apply_adaptformer(model, AdaptFormerConfig(bottleneck=8))
    apply_freezing(model, freeze=False)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    _fit(model)
    unchanged = [k for k, v in model.state_dict().items() if np.array_equal(before[k], v.numpy())]
    assert unchanged == []


def test_layer_attribute_freezes_nothing_which_is_why_we_freeze_parameters():
    """The tutorial's ``layer.stop_gradient = True`` is only a Python attribute on the Layer."""
    model = VisionTransformer(TINY, class_num=4)
    model.blocks[0].stop_gradient = True
    assert all(not p.stop_gradient for p in model.blocks[0].parameters())
    set_trainable(model, lambda n: not n.startswith("blocks.0."))
    assert all(p.stop_gradient for p in model.blocks[0].parameters())


def test_count_and_summary_line():
    model = VisionTransformer(TINY, class_num=4)
    set_trainable(model, lambda n: n.startswith("head."))
    count = count_parameters(model)
    assert count.trainable == 32 * 4 + 4
    assert count.total == sum(int(np.prod(p.shape)) for p in model.parameters())
    assert str(count).startswith(f"trainable parameters: 132 of {count.total:,} (")
    assert count.trainable_bytes == 132 * 4
