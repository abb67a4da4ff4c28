"""Per-method recipes (``transfer.by_method``): the keys apply only to their method, the
command line wins over them, bad ones are one line, and a tiny real run trains with them."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from ppadapt.apps.cli import load_tool_config, transfer_main
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.errors import ConfigError
from ppadapt.runs.checkpoint import load_state_dict
from ppadapt.training.engine import run_stage

RECIPE = """\
transfer:
  dataset: digits
  lr: 0.1
  by_method:
    adaptformer: {optimizer: adamw, lr: 0.01, weight_decay: 0.05}
"""
TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "transfer.pretrained=none", "epochs=2",
        "batch_size=128", "warmup_steps=2"]


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def load(path, *overrides, method="adaptformer"):
    return load_config(path, list(overrides), stage="transfer", preset=[("method.name", method)])


def test_the_recipe_applies_to_its_method_only(recipe_file):
    t = load(recipe_file).transfer
    assert (t.optimizer, t.lr, t.weight_decay) == ("adamw", 0.01, 0.05)
    t = load(recipe_file, method="lora").transfer
    assert (t.optimizer, t.lr, t.weight_decay) == ("momentum", 0.1, 5e-4)
    # --freeze stands for adaptformer, so it gets the recipe too
    t = load_config(recipe_file, [], stage="transfer", preset=[("transfer.freeze", True)]).transfer
    assert (t.optimizer, t.lr) == ("adamw", 0.01)


def test_keys_the_command_line_sets_win(recipe_file):
    t = load(recipe_file, "lr=0.003").transfer  # a bare stage key
    assert (t.optimizer, t.lr, t.weight_decay) == ("adamw", 0.003, 0.05)
    t = load(recipe_file, "transfer.weight_decay=0").transfer
    assert (t.lr, t.weight_decay) == (0.01, 0.0)
    t = load(recipe_file, "transfer.by_method.adaptformer.lr=0.5").transfer  # or the recipe itself
    assert (t.optimizer, t.lr) == ("adamw", 0.5)
    t = load(recipe_file, "transfer.by_method={}").transfer  # none at all: the stage's keys
    assert (t.optimizer, t.lr) == ("momentum", 0.1)


def test_a_flag_wins_too(recipe_file):
    args = argparse.Namespace(config=str(recipe_file), freeze=True, lr=0.2, override=[])
    t = load_tool_config(args, "transfer", None).transfer
    assert (t.optimizer, t.lr, t.weight_decay) == ("adamw", 0.2, 0.05)


@pytest.mark.parametrize("override, message", [
    ("transfer.by_method.adaptformr.lr=1", "transfer.by_method: unknown method 'adaptformr'; did you mean "
                                           "'adaptformer'?"),
    ("transfer.by_method.adaptformer.lrr=1", "unknown config key 'lrr' in section 'transfer.by_method.adaptformer'; "
                                             "did you mean 'lr'?"),
    ("transfer.by_method.adaptformer.lr=fast", "transfer.by_method.adaptformer.lr must be float"),
    ("transfer.by_method.adaptformer.pretrained=x", "a recipe sets how a method trains, not pretrained"),
    ("transfer.by_method=3", "transfer.by_method must be a mapping"),
    ("transfer.by_method.adaptformer.optimizer=adamm", "transfer.optimizer must be one of"),
])
def test_bad_recipes_are_one_line(recipe_file, override, message, capsys):
    assert transfer_main(["--config", str(recipe_file), "--freeze", "--dry-run", "-o", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_a_bad_recipe_of_another_method_is_still_caught(recipe_file):
    with pytest.raises(ConfigError, match="unknown config key 'momentun'"):
        load(recipe_file, "transfer.by_method.lora.momentun=0.5", method="full")


def same_tensors(a: Path, b: Path) -> bool:
    """The two checkpoints hold equal tensors (their files also hold Paddle's per-process
    tensor names, which differ between two models built in one process)."""
    x, y = load_state_dict(str(a)), load_state_dict(str(b))
    return x.keys() == y.keys() and all(np.array_equal(np.array(x[k]), np.array(y[k])) for k in x)


def test_a_real_run_trains_with_its_recipe_and_other_methods_do_not_see_it(tmp_path):
    def run(out, method, *extra):
        cfg = load_config(CONFIG_DIR / "digits.yaml", [*TINY, *extra], stage="transfer",
                          preset=[("method.name", method)])
        cfg.output = str(tmp_path / out)
        lines: list[str] = []
        result = run_stage(cfg, "transfer", log=lines.append, verbose=0)
        return result.run_dir, lines

    recipe = "transfer.by_method.adaptformer={optimizer: adamw, lr: 0.003, weight_decay: 0.05}"
    run_dir, lines = run("af", "adaptformer", recipe)
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["config"]["transfer"]["optimizer"], record["config"]["transfer"]["lr"]) == ("adamw", 0.003)
    assert "recipe of method adaptformer (transfer.by_method.adaptformer): optimizer=adamw, lr=0.003, " \
           "weight_decay=0.05" in lines
    same_dir, _ = run("af_explicit", "adaptformer", "optimizer=adamw", "lr=0.003", "weight_decay=0.05")
    assert same_tensors(run_dir / "final.pdparams", same_dir / "final.pdparams")

    # full fine-tuning with the same recipe in the config trains exactly as without it
    with_recipe, lines = run("full", "full", recipe)
    without, _ = run("full_plain", "full")
    assert not any(line.startswith("recipe of method") for line in lines)
    assert same_tensors(with_recipe / "final.pdparams", without / "final.pdparams")
    assert not same_tensors(with_recipe / "final.pdparams", run_dir / "final.pdparams")
