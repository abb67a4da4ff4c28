"""Issue 11 on the config side: AdaptFormer as an ordinary method, model.carry, the older
``adapter`` form read with one note, the model's geometry, the table of flags."""
import argparse
import re
import warnings
from pathlib import Path

import pytest

from ppadapt.apps.cli import use_backbone, train_main, transfer_main
from ppadapt.config import (CONFIG_DIR, carried_config, config_from_dict, load_config, method_config, set_value,
                            transfer_method)
from ppadapt.config.flags import FLAGS, apply_flags, explicit_keys, presets
from ppadapt.errors import ConfigError, LegacyConfigNote
from ppadapt.models import ViTConfig
from ppadapt.training.resume import flat_config

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8"]
VIT_B16_BOTTLENECK_8 = "156,768 without the head"  # V-PETL's AdaptFormer count, as in test_cli


def load(path, overrides=(), **kw):
    """``load_config`` that returns (config, the LegacyConfigNote messages it issued)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(path, list(overrides), **kw)
    return cfg, [str(w.message) for w in caught if issubclass(w.category, LegacyConfigNote)]


def one_line(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


# --- AdaptFormer is an ordinary method -------------------------------------------------------

def test_method_adaptformer_with_method_options_end_to_end(capsys):
    """On a plain backbone, --method adaptformer -o method.bottleneck=8 is like any method."""
    code = transfer_main(["--dry-run", "--backbone", "ViT_base_patch16_224", "--method", "adaptformer",
                          "-o", "method.bottleneck=8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert VIT_B16_BOTTLENECK_8 in out and err == ""


def test_method_adaptformer_on_a_tiny_plain_model_counts_exactly(tmp_path, capsys):
    config = tmp_path / "plain.yaml"
    config.write_text("model: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, carry: {}}\n"
                      "transfer: {dataset: digits}\n")
    assert transfer_main(["--dry-run", "--config", str(config), "--method", "adaptformer",
                          "-o", "method.bottleneck=8", "-o", "method.layernorm=in"]) == 0
    out = capsys.readouterr().out
    branch = (32 * 8 + 8) + (8 * 32 + 32) + 2 * 32  # down, up, the branch's LayerNorm
    head = 32 * 5 + 5  # digits 5-9
    assert out.strip().endswith(f"{2 * branch:,} without the head")
    assert f"trainable parameters: {2 * branch + head:,} of " in out


def test_method_options_that_disagree_with_the_carried_modules_are_one_line(capsys):
    # the tutorial's model carries bottleneck-64 branches: the transfer reuses them
    assert transfer_main(["--dry-run", "--method", "adaptformer", "-o", "method.bottleneck=8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: method.bottleneck=8 disagrees with "
                                               "model.carry.adaptformer.bottleneck=64"), err
    assert "model.carry.adaptformer.bottleneck" in err[0] and "drop method.bottleneck" in err[0]
    # options that agree (or only restate the carried ones) are fine
    cfg = load_config(CONFIG_DIR / "cpu.yaml", ["transfer.freeze=true", "method.bottleneck=64",
                                                "method.variant=official"], stage="transfer")
    assert method_config(cfg).bottleneck == 64


def test_freeze_is_the_alias_declared_by_the_method():
    cfg = load_config(CONFIG_DIR / "cpu.yaml", ["transfer.freeze=true"])
    assert transfer_method(cfg) == "adaptformer"
    with pytest.raises(ConfigError, match="--freeze means method 'adaptformer' but method 'lora' is set"):
        load_config(CONFIG_DIR / "cpu.yaml", ["transfer.freeze=true", "method.name=lora"])


def test_model_carry_keys_and_plain_backbone():
    cfg = load_config(CONFIG_DIR / "cpu.yaml", ["model.carry.adaptformer.bottleneck=8",
                                                "model.carry.lora={rank: 2}"])
    assert cfg.model.carry == {"adaptformer": {"variant": "official", "bottleneck": 8}, "lora": {"rank": 2}}
    assert carried_config(cfg, "lora").rank == 2
    cfg = load_config(CONFIG_DIR / "cpu.yaml", ["model.carry.adaptformer=null"])
    assert cfg.model.carry == {}
    cfg = load_config(CONFIG_DIR / "cpu.yaml", ["model.carry={}"])
    arch = cfg.model.architecture()  # what VisionTransformer gets: the architecture alone
    assert cfg.model.carry == {} and type(arch) is ViTConfig and arch.embed_dim == 192
    for override, message in [
        ("model.carry.lorra.rank=2", "model.carry: unknown method 'lorra'; did you mean 'lora'?"),
        ("model.carry.bitfit={}", "model.carry.bitfit: BitFit attaches no modules for a model to carry"),
        ("model.carry.adaptformer.bottlenek=8", "model.carry.adaptformer: method 'adaptformer' has no option "
                                                "'bottlenek'"),
        ("model.carry.adaptformer.bottleneck=x", "model.carry.adaptformer.bottleneck must be int, got 'x'"),
        ("model.carry.adaptformer.layernorm=both", "model.carry.adaptformer.layernorm must be one of"),
        ("model.carry.adaptformer=8", "model.carry.adaptformer must be a mapping"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(CONFIG_DIR / "cpu.yaml", [override])
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_backbone_gives_a_plain_vit_and_the_method_keeps_the_options():
    overrides = ["model.img_size=32", "model.patch_size=4", "model.carry.adaptformer.bottleneck=8",
                 "model.carry.lora.rank=2"]
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", overrides + ["transfer.freeze=true"], stage="transfer")
    assert set(cfg.model.carry) == {"adaptformer", "lora"}
    use_backbone(cfg, "ViT_base_patch16_224", overrides)
    assert cfg.model.carry == {} and (cfg.model.img_size, cfg.model.patch_size, cfg.model.embed_dim) == (32, 4, 768)
    assert cfg.method.options["bottleneck"] == 8 and method_config(cfg).bottleneck == 8


# --- the older form: adapter.* -------------------------------------------------------------------

OLD_YAML = """\
model: {img_size: 32, patch_size: 3, embed_dim: 32, depth: 2, num_heads: 2}
adapter: {variant: official, bottleneck: 8, dropout: 0.0}
transfer: {dataset: digits}
"""


def test_an_old_yaml_file_loads_as_carry_with_one_note(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_YAML)
    cfg, notes = load(path, ["adapter.layernorm=in", "adapter.scale=0.5"])
    assert cfg.model.carry == {"adaptformer": {"variant": "official", "bottleneck": 8, "dropout": 0.0,
                                               "layernorm": "in", "scale": 0.5}}
    assert cfg.model.drop_border  # its own 3-pixel patches on 32 pixels train as before
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith(f"{path} and -o: older config form, read as the current one: "
                               "adapter.* as model.carry.adaptformer.*")
    assert "model.drop_border: true" in notes[0]
    assert "adapter" not in cfg.to_dict()
    new, notes = load(CONFIG_DIR / "cpu.yaml")
    assert notes == []


def test_old_override_keys_map_like_the_old_semantics():
    # enabled (the old default): the model carries the branches with the options
    cfg, notes = load(CONFIG_DIR / "cpu.yaml", ["adapter.bottleneck=8", "adapter.dropout=0.2"])
    assert cfg.model.carry["adaptformer"] == {"variant": "official", "bottleneck": 8, "dropout": 0.2}
    assert len(notes) == 1 and notes[0].startswith("-o: older config form")
    # enabled=false + the method (or --freeze): the options go to the transfer method
    cfg, notes = load(CONFIG_DIR / "cpu.yaml", ["transfer.freeze=true", "adapter.enabled=false",
                                                "adapter.bottleneck=8"])
    assert cfg.model.carry == {} and cfg.method.options == {"variant": "official", "bottleneck": 8}
    assert method_config(cfg).bottleneck == 8 and len(notes) == 1 and "method.* options" in notes[0]
    # enabled=false with another method: a plain ViT, the options unused
    cfg, notes = load(CONFIG_DIR / "cpu.yaml", ["method.name=lora", "adapter.enabled=false", "adapter.bottleneck=8"])
    assert cfg.model.carry == {} and cfg.method.options == {} and "unused" in notes[0]
    # on a plain model, the old default (enabled) still gives it the branches
    cfg, notes = load(CONFIG_DIR / "cpu.yaml", ["model.carry={}", "adapter.bottleneck=8"])
    assert cfg.model.carry == {"adaptformer": {"bottleneck": 8}}


@pytest.mark.parametrize("override,message", [
    ("adapter.bottlenek=8", "unknown config key 'bottlenek' in section 'adapter'; did you mean 'bottleneck'?"),
    ("adapter.bottleneck=x", "adapter.bottleneck must be int, got 'x'"),
    ("adapter.enabled=maybe", "adapter.enabled must be bool"),
    ("adapter.layernorm=both", "adapter.layernorm must be one of"),
    ("adapter=3", "adapter is a section"),
])
def test_old_keys_keep_their_error_messages(override, message):
    with pytest.raises(ConfigError) as err:
        load(CONFIG_DIR / "cpu.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def _old_record_config(**adapter) -> dict:
    """The config dict of a run.json / resume checkpoint written before model.carry existed."""
    data = load_config(CONFIG_DIR / "tutorial.yaml").to_dict()
    for key in ("carry", "drop_border"):
        del data["model"][key]
    data["adapter"] = {"variant": "official", "bottleneck": 64, "scale": None, "learnable_scale": None,
                       "layernorm": "none", "dropout": 0.1, "input": None, "init": None, "enabled": True, **adapter}
    return data


def test_an_old_run_json_config_loads_with_one_note():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = config_from_dict(_old_record_config(bottleneck=8), source="run.json")
    notes = [str(w.message) for w in caught if issubclass(w.category, LegacyConfigNote)]
    assert len(notes) == 1 and notes[0].startswith("run.json: older config form")
    assert cfg.model.carry["adaptformer"]["bottleneck"] == 8 and cfg.model.drop_border  # patch 3 on 32
    # an old frozen run without carried branches: the method gets the adapter options
    old = _old_record_config(enabled=False, bottleneck=4)
    old["transfer"]["freeze"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = config_from_dict(old, source="run.json")
    assert cfg.model.carry == {} and transfer_method(cfg) == "adaptformer" and method_config(cfg).bottleneck == 4
    # and a new record reads back as it was written, with no note
    new = load_config(CONFIG_DIR / "tutorial.yaml").to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_from_dict(new).to_dict() == new


def test_cli_prints_the_note_once_on_the_run_log(tmp_path, capsys):
    """train.py: one ``note:`` line on stdout (its log), the error alone on stderr."""
    assert train_main(["--pretrain", "cifar10", "--data-file", str(tmp_path / "nope.tar.gz"), "--output",
                       str(tmp_path), "-o", "adapter.bottleneck=8", "-o", "adapter.dropout=0.0", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert len(one_line(out, "note: ")) == 1 and "adapter.* as model.carry.adaptformer.*" in out
    assert err.splitlines() == [line for line in err.splitlines() if line.startswith("error: data file not found")]
    # --dry-run's stdout is the summary alone: the note goes to stderr there
    assert transfer_main(["--dry-run", "--dataset", "digits", "-o", "adapter.bottleneck=8"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("trainable parameters: ") and len(out.splitlines()) == 1
    assert len(one_line(err, "note: ")) == 1 and len(err.splitlines()) == 1


def test_old_keys_on_a_resume_command_line_stand_for_the_new_ones():
    args = argparse.Namespace(override=["adapter.bottleneck=8", "adapter.enabled=false", "lr=0.1"],
                              dataset=None, data_file=None, data_dir=None, epochs=None, batch_size=None, lr=None,
                              output=None, seed=None)
    keys = explicit_keys(args, "transfer")
    assert {"model.carry.adaptformer.bottleneck", "method.bottleneck", "model.carry.adaptformer", "method",
            "transfer.lr"} <= set(keys)
    flat = flat_config(load_config(CONFIG_DIR / "cpu.yaml").to_dict())
    assert flat["model.carry.adaptformer.bottleneck"] == 64 and flat["method.name"] == "full"


# --- one table of flags ------------------------------------------------------------------------------

def test_one_table_of_flags_for_setting_and_for_resume():
    args = argparse.Namespace(method="lora", freeze=False, dataset=None, data_file=None, data_dir="imgs", epochs=3,
                              batch_size=None, lr=None, output="out", seed=None, pretrained="a b.pdparams",
                              resume_adapter=None, backbone="ViT_base_patch16_224",
                              override=["epochs=5", "method.name=ssf", "model.depth=3"])
    assert presets(args, "transfer") == [("method.name", "lora")]
    cfg = load_config(CONFIG_DIR / "cpu.yaml", args.override, stage="transfer", preset=presets(args, "transfer"))
    apply_flags(cfg, args, "transfer")
    # presets lose to -o (method ssf), the other flags win over it (epochs 3)
    assert (cfg.method.name, cfg.transfer.epochs, cfg.transfer.data_dir, cfg.transfer.dataset) == \
        ("ssf", 3, "imgs", "folder")
    assert (cfg.output, cfg.transfer.pretrained, cfg.model.depth) == ("out", "a b.pdparams", 3)
    keys = explicit_keys(args, "transfer")
    assert set(keys) == {"method.name", "transfer.data_dir", "transfer.dataset", "transfer.epochs", "output",
                         "transfer.pretrained", "model", "model.depth"}
    assert {flag.dest for flag in FLAGS} >= {"method", "freeze", "epochs", "batch_size", "lr", "seed", "backbone"}


# --- geometry ------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["model.patch_size=7"], "model.patch_size (7) does not divide model.img_size (32): its 4x4 patch grid would "
                             "drop the last 4 pixel rows and columns of every image; use a patch size that "
                             "divides 32 (e.g. 4 or 8), or set model.drop_border: true"),
    (["model.num_heads=5"], "model.embed_dim (192) must be divisible by model.num_heads (5)"),
    (["model.patch_size=64"], "model.patch_size (64) is larger than model.img_size (32)"),
    (["model.in_chans=1"], "model.in_chans must be 3"),
    (["model.mlp_ratio=0"], "model.mlp_ratio must be positive"),
    (["model.drop_path_rate=1.0"], "model.drop_path_rate must be in [0, 1)"),
])
def test_geometry_that_cannot_work_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG_DIR / "cpu.yaml", overrides, stage="transfer")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_geometry_is_checked_before_any_data(tmp_path, capsys):
    assert transfer_main(["--config", str(CONFIG_DIR / "cpu.yaml"), "--data-file", str(tmp_path / "nope.tar.gz"),
                          "--output", str(tmp_path), "-o", "model.patch_size=7"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.patch_size (7) does not divide"), err
    assert not any(tmp_path.iterdir())


def test_geometry_that_works():
    cfg = load_config(CONFIG_DIR / "cpu.yaml", ["model.patch_size=3", "model.drop_border=true"])
    assert cfg.model.patch_size == 3
    assert load_config(CONFIG_DIR / "tutorial.yaml").model.patch_size == 3  # declares drop_border
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", ["model.img_size=32", "model.patch_size=4"], stage="transfer")
    use_backbone(cfg, "ViT_base_patch16_224", ["model.img_size=32", "model.patch_size=4"])
    assert (cfg.model.img_size, cfg.model.patch_size, cfg.model.drop_border) == (32, 4, False)


# --- nothing outside methods/ names a method ---------------------------------------------------------

def test_nothing_outside_methods_says_adaptformer():
    package = REPO / "ppadapt"
    offenders = []
    for path in sorted(package.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.is_relative_to(package / "methods"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search("adaptformer", line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_set_value_and_tools_route_the_old_form_too():
    cfg = load_config(CONFIG_DIR / "digits.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_value(cfg, "adapter.bottleneck", 4)
    assert cfg.model.carry["adaptformer"] == {"variant": "official", "bottleneck": 4}
    assert [issubclass(w.category, LegacyConfigNote) for w in caught] == [True]
    from ppadapt.config import legacy_notes
    shown = []
    with legacy_notes(shown.append):  # bench.py: the note becomes one of its progress lines
        load_config(CONFIG_DIR / "digits.yaml", ["adapter.dropout=0.0", "adapter.bottleneck=4"])
    assert len(shown) == 1 and shown[0].startswith("-o: older config form")
