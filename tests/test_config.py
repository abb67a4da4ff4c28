"""Configs: shipped files load, every key is checked, overrides are typed."""
from pathlib import Path

import pytest

from ppadapt.config import CONFIG_DIR, carried_config, load_config
from ppadapt.errors import ConfigError


@pytest.mark.parametrize("name", ["tutorial", "cpu", "digits"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert cfg.name == name


def test_tutorial_protocol():
    cfg = load_config(CONFIG_DIR / "tutorial.yaml")
    m, p, t = cfg.model, cfg.pretrain, cfg.transfer
    assert (m.embed_dim, m.depth, m.num_heads, m.patch_size, m.img_size, m.qkv_bias) == (768, 12, 12, 3, 32, False)
    assert (p.dataset, p.epochs, p.lr, p.momentum, p.weight_decay, p.batch_size, p.warmup_steps) == \
        ("cifar100", 80, 0.01, 0.9, 5e-4, 128, 2000)
    assert (t.dataset, t.epochs, t.freeze) == ("cifar10", 10, False)
    assert carried_config(cfg, "adaptformer").bottleneck == 64


def test_overrides_are_typed_and_bare_stage_keys_go_to_the_stage():
    cfg = load_config(CONFIG_DIR / "cpu.yaml", ["lr=1e-3", "model.depth=3", "transfer.classes=[1, 2]",
                                                "adapter.scale=0.5", "transfer.freeze=true"], stage="transfer")
    assert cfg.transfer.lr == 0.001 and cfg.pretrain.lr == 0.05
    assert cfg.model.depth == 3 and cfg.transfer.classes == [1, 2]
    assert carried_config(cfg, "adaptformer").scale == 0.5 and cfg.transfer.freeze is True


@pytest.mark.parametrize("override,message", [
    ("transfer.epoch=3", "unknown config key 'epoch' in section 'transfer'; did you mean 'epochs'?"),
    ("modle.depth=3", "unknown config key 'modle' at top level; did you mean 'model'?"),
    ("model.depth=deep", "model.depth must be int, got 'deep'"),
    ("model.depth=2.5", "model.depth must be int"),
    ("transfer.freeze=maybe", "transfer.freeze must be bool"),
    ("model=3", "model is a section"),
    ("epochs", "is not key=value"),
    ("transfer.epochs=0", "transfer.epochs must be positive"),
    ("transfer.lr=-1", "transfer.lr must be positive"),
    ("transfer.batch_size=-4", "transfer.batch_size must be positive"),
    ("model.num_heads=5", "must be divisible by model.num_heads"),
    ("adapter.layernorm=both", "adapter.layernorm must be one of"),
    ("transfer.schedule=linear", "transfer.schedule must be one of"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG_DIR / "cpu.yaml", [override], stage="transfer")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_in_file_names_the_file(tmp_path: Path):
    path = tmp_path / "x.yaml"
    path.write_text("model:\n  embed_dims: 64\n")
    with pytest.raises(ConfigError, match=r"x.yaml: unknown config key 'embed_dims' in section 'model'; "
                                          r"did you mean 'embed_dim'\?"):
        load_config(path)


def test_bad_yaml_and_missing_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
