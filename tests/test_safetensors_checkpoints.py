"""Full checkpoints as safetensors (``save_format: safetensors``): a run writes best/final as
``.safetensors``, and every place that takes a ``.pdparams`` takes them (the default
pretrained checkpoint, ``--pretrained``, predict, export), without unpickling anything."""
from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.errors import CheckpointError, ConfigError
from ppadapt.runs import paddle_pickle
from ppadapt.runs.checkpoint import load_state_dict
from ppadapt.runs.layout import find_weights
from ppadapt.runs.loading import load_run
from ppadapt.runs.resume_file import load_checkpoint
from ppadapt.utils import safe_pickle

TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "epochs=1", "batch_size=256", "warmup_steps=1",
        "save_format=safetensors"]


@dataclass
class Runs:
    root: Path
    pretrain: Path
    transfer: Path
    logs: list
    image: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    from ppadapt.training.engine import run_stage

    root = tmp_path_factory.mktemp("safetensors_runs")
    logs, dirs = [], {}
    for stage, extra in (("pretrain", []), ("transfer", ["method.name=lora"])):
        cfg = load_config(CONFIG_DIR / "digits.yaml", TINY + extra, stage=stage)
        cfg.output = str(root / "output")
        dirs[stage] = run_stage(cfg, stage, log=logs.append, verbose=0).run_dir
    image = root / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    return Runs(root, dirs["pretrain"], dirs["transfer"], logs, image)


def test_a_run_writes_best_and_final_as_safetensors(runs):
    for run in (runs.pretrain, runs.transfer):
        names = sorted(p.name for p in run.iterdir())
        assert "best.safetensors" in names and "final.safetensors" in names
        assert not [n for n in names if n.endswith(".pdparams")]
        record = json.loads((run / "run.json").read_text())
        assert Path(record["checkpoints"]["final"]).name == "final.safetensors"
        assert record["config"]["save_format"] == "safetensors"
        # the same tensors as the network the resume checkpoint holds, bit for bit
        final = load_state_dict(run / "final.safetensors")
        model = load_checkpoint(run / "resume.pdckpt")["model"]
        assert sorted(final) == sorted(model)
        for k, v in final.items():
            want = np.asarray(model[k])
            assert v.numpy().dtype == want.dtype and v.numpy().tobytes() == want.tobytes(), k
    loaded = f"loaded pretrained weights from {runs.pretrain / 'final.safetensors'}"
    assert any(line.startswith(loaded) for line in runs.logs)  # the default: train.py's final checkpoint
    text = "\n".join(runs.logs)
    assert f"checkpoints: {runs.transfer / 'best.safetensors'}, {runs.transfer / 'final.safetensors'}" in text
    assert (runs.transfer / "adapter" / "adapter_model.safetensors").is_file()


def test_predict_and_export_load_them_without_unpickling(runs, tmp_path, monkeypatch):
    from ppadapt.apps.export import export_model
    from ppadapt.apps.predict import Predictor

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")
    for owner, name in ((pickle, "load"), (pickle, "loads"), (paddle, "load"), (paddle_pickle, "load"),
                        (safe_pickle.RestrictedUnpickler, "load")):
        monkeypatch.setattr(owner, name, refuse)

    loaded = load_run(runs.transfer)
    assert loaded.weights == runs.transfer / "best.safetensors" and loaded.method == "lora"
    assert load_run(runs.transfer / "final.safetensors", None).weights.name == "final.safetensors"
    by_dir = Predictor(runs.transfer)(runs.image)
    by_file = Predictor(runs.transfer / "best.safetensors")(runs.image)
    assert by_dir == by_file and set(by_dir["labels"]) <= set("56789")
    result = export_model(runs.pretrain, tmp_path / "export", weights="final", log=lambda line: None)
    assert result.max_abs_diff < 1e-5


def test_pretrained_takes_a_safetensors_file(runs, tmp_path):
    from ppadapt.training.engine import run_stage

    logs = []
    cfg = load_config(CONFIG_DIR / "digits.yaml", [*TINY[:-1], "method.name=bitfit",
                                                   f"transfer.pretrained={runs.pretrain / 'best.safetensors'}"],
                      stage="transfer")
    cfg.output = str(tmp_path)
    run = run_stage(cfg, "transfer", log=logs.append, verbose=0).run_dir
    assert any(line.startswith(f"loaded pretrained weights from {runs.pretrain / 'best.safetensors'}") for line in logs)
    assert (run / "final.pdparams").is_file()  # the default format stays pdparams
    pre, tuned = load_state_dict(runs.pretrain / "best.safetensors"), load_state_dict(run / "final.pdparams")
    frozen = [k for k in pre if not k.startswith("head.") and not k.endswith(".bias")]
    assert all(np.array_equal(pre[k].numpy(), tuned[k].numpy()) for k in frozen)


def test_the_file_a_run_lists_wins_over_a_stale_one(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs.pretrain, run)
    record = json.loads((run / "run.json").read_text())
    record["checkpoints"] = {k: str(Path(v).name) if v else v for k, v in record["checkpoints"].items()}
    (run / "run.json").write_text(json.dumps(record))
    paddle.save({"stale": paddle.zeros([1])}, str(run / "best.pdparams"))  # an earlier run's, in the other format
    assert find_weights(run, "best") == run / "best.safetensors"
    (run / "run.json").write_text(json.dumps({**record, "checkpoints": {}}))
    assert find_weights(run, "best") == run / "best.pdparams"  # nothing listed: the .pdparams first


def test_a_broken_safetensors_checkpoint_is_one_line(runs, tmp_path, capsys):
    from ppadapt.apps.predict import predict_main

    run = tmp_path / "run"
    shutil.copytree(runs.transfer, run)
    data = (run / "best.safetensors").read_bytes()
    (run / "best.safetensors").write_bytes(data[: len(data) // 2])
    assert predict_main(["--checkpoint", str(run), str(runs.image)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {run / 'best.safetensors'} (")
    assert "cannot be read: it is truncated, corrupt or not a safetensors file" in lines[0]
    (run / "best.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_state_dict(run / "best.safetensors")


def test_an_unknown_save_format_is_a_config_error():
    with pytest.raises(ConfigError, match=r"save_format must be one of \('pdparams', 'safetensors'\), got 'pickle'"):
        load_config(CONFIG_DIR / "digits.yaml", ["save_format=pickle"], stage="pretrain")
