"""The tuner seam (issue 11): one injection, one "already applied" check, one record of the
applied methods, one trainability rule and one merge loop for every method."""
import numpy as np
import paddle
import pytest

from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.methods import METHODS, added_parameter_names, adapter_file_meta, applied_methods, get_method
from ppadapt.methods.build import apply_transfer_method, build_model
from ppadapt.runs.pretrained import load_pretrained

from tiny import tiny_vit

TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_applying_a_method_twice_is_one_clear_error(name):
    model = tiny_vit()
    get_method(name).apply_to(model)
    with pytest.raises(ValueError) as err:
        get_method(name).apply_to(model)
    assert "already applied to this model" in str(err.value) and "\n" not in str(err.value)


def test_methods_of_one_kind_exclude_each_other():
    model = tiny_vit()
    get_method("vpt-shallow").apply_to(model, tokens=2)
    with pytest.raises(ValueError, match="^VPT is already applied to this model$"):
        get_method("vpt-deep").apply_to(model)


def test_a_taken_sublayer_name_is_an_error_before_anything_is_attached():
    model = tiny_vit()
    model.blocks[1].add_sublayer("adaptmlp", paddle.nn.Identity())
    before = {n for n, _ in model.named_sublayers()}
    with pytest.raises(ValueError, match="already has a sublayer blocks.1.adaptmlp"):
        get_method("adaptformer").apply_to(model)
    assert not applied_methods(model) and {n for n, _ in model.named_sublayers()} == before


@pytest.mark.parametrize("name", sorted(METHODS))
def test_trainability_is_the_methods_parameters_and_the_head(name):
    model = tiny_vit(qkv_bias=True)
    method = get_method(name)
    method.apply_to(model)
    method.mark_trainable(model)
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    everything = {n for n, _ in model.named_parameters()}
    head = {"head.weight", "head.bias"}
    assert head <= trainable
    if name == "full":
        assert trainable == everything
    else:
        assert trainable == head | {n for n in everything if method.owns(n) and not n.startswith("head.")}
    # the modules a method attached are exactly the parameters it owns (bitfit attaches none)
    added = added_parameter_names(model)
    if name not in ("full", "linear", "bitfit"):
        assert added and added == {n for n in everything if method.owns(n)}
    else:
        assert added == set()


def test_the_record_of_applied_methods_and_adapter_file_meta():
    cfg = load_config(CONFIG_DIR / "cpu.yaml", TINY + ["model.carry.adaptformer.bottleneck=8",
                                                       "method.name=lora", "method.rank=2"], stage="transfer")
    model = build_model(cfg, 5)
    assert list(applied_methods(model)) == ["adaptformer"]
    assert applied_methods(model)["adaptformer"]["bottleneck"] == 8
    assert applied_methods(model)["adaptformer"]["scale"] == 0.1  # resolved: the official variant's
    method = apply_transfer_method(model, cfg)
    assert method.name == "lora" and list(applied_methods(model)) == ["adaptformer", "lora"]
    assert applied_methods(model)["lora"] == {"rank": 2, "alpha": 8.0, "dropout": 0.0, "targets": "qv"}
    meta = adapter_file_meta(model, "lora")
    assert meta == {"method": "lora", "options": applied_methods(model)["lora"], "methods": applied_methods(model)}
    # only the transfer method trains, the carried branches stay frozen
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    assert trainable and all("_lora." in n or n.startswith("head.") for n in trainable)


def test_a_carried_transfer_method_reuses_its_modules():
    cfg = load_config(CONFIG_DIR / "cpu.yaml", TINY + ["transfer.freeze=true"], stage="transfer")
    model = build_model(cfg, 5)
    branches = [id(b.adaptmlp) for b in model.blocks]
    apply_transfer_method(model, cfg)
    assert [id(b.adaptmlp) for b in model.blocks] == branches
    assert list(applied_methods(model)) == ["adaptformer"]
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    assert trainable and all(".adaptmlp." in n or n.startswith("head.") for n in trainable)


@pytest.mark.parametrize("name,options", [("lora", {"rank": 4, "targets": "qkv"}), ("ssf", {})])
def test_merge_through_the_seam(name, options):
    paddle.seed(0)
    model = tiny_vit(qkv_bias=False)
    method = get_method(name)
    modules_before = {n for n, _ in model.named_sublayers()}
    method.apply_to(model, **options)
    for n, p in model.named_parameters():  # away from the no-op start
        if method.owns(n):
            p.set_value(p + paddle.randn(p.shape) * 0.05)
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    expected = model(x).numpy()
    assert method.merge is not None
    method.merge(model)
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-5, rtol=0)
    assert not applied_methods(model) and not added_parameter_names(model)
    assert {n for n, _ in model.named_sublayers()} == modules_before  # modules and hooks gone
    with pytest.raises(ValueError, match="is not applied to this model"):
        method.merge(model)
    method.apply_to(model, **options)  # merged: it can be applied again


def test_only_lora_and_ssf_merge():
    assert sorted(name for name, m in METHODS.items() if m.merge is not None) == ["lora", "ssf"]


def test_run_folder_suffixes_and_flag():
    assert get_method("full").suffix == "_full" and get_method("adaptformer").suffix == "_frozen"
    assert get_method("lora").suffix == "_lora" and get_method("vpt-deep").suffix == "_vpt-deep"
    from ppadapt.methods import method_of_flag
    assert method_of_flag("freeze").name == "adaptformer"


def test_a_checkpoint_without_the_carried_modules_loads_with_them_at_init(tmp_path):
    """load_pretrained asks the seam which tensors methods attached: any carried method's
    may be absent from the checkpoint (e.g. a PaddleClas ViT), nothing else."""
    paddle.seed(0)
    plain = tiny_vit(class_num=7)
    path = tmp_path / "plain.pdparams"
    paddle.save(plain.state_dict(), str(path))
    cfg = load_config(CONFIG_DIR / "cpu.yaml", TINY + ["model.carry={lora: {rank: 2}, adaptformer: {}}",
                                                       "model.qkv_bias=false"], stage="transfer")
    model = build_model(cfg, 5)
    left = load_pretrained(model, path, log=lambda line: None)
    assert set(left) == added_parameter_names(model) | {"head.weight", "head.bias"}
    assert any("_lora." in k for k in left) and any(".adaptmlp." in k for k in left)
    np.testing.assert_array_equal(model.state_dict()["blocks.1.attn.qkv.weight"].numpy(),
                                  plain.state_dict()["blocks.1.attn.qkv.weight"].numpy())
