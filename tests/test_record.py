"""run.json: one typed record (RunRecord), one writer, one reader (issue 11)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.errors import CheckpointError, DataError
from ppadapt.methods.trainable import ParamCount
from ppadapt.runs.record import HEADER, RUN_RECORD, RunRecord, read_record, record_path, write_record

CONFIG = {"model": {"embed_dim": 16}, "transfer": {"epochs": 2}}
PARAMS = ParamCount(trainable=1_085, total=20_000, trainable_bytes=4_340, head=85)
HISTORY = [{"epoch": 0, "train_loss": 1.5, "lr": 0.1, "train_seconds": 0.5, "eval_loss": 1.2, "acc_top1": 0.5,
            "epoch_seconds": 0.7}]


def header(**changes) -> RunRecord:
    args = dict(stage="transfer", dataset="digits", method="lora", class_names=["5", "6"], mean=(0.1, 0.2, 0.3),
                std=(0.4, 0.5, 0.6), config=CONFIG, params=PARAMS)
    return RunRecord.header(**{**args, **changes})


def legacy_json(meta: dict, history, best, final, checkpoints) -> str:
    """run.json as BestAndFinalCheckpoint wrote it before RunRecord: {**meta, ...}, indented."""
    return json.dumps({**meta, "history": history, "best": best, "final": final, "checkpoints": checkpoints},
                      indent=2) + "\n"


def test_header_holds_exactly_the_keys_the_engine_wrote():
    meta = header().meta()
    assert list(meta) == list(HEADER)
    assert meta == {"stage": "transfer", "dataset": "digits", "method": "lora", "class_names": ["5", "6"],
                    "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "config": CONFIG,
                    "params": {"trainable": 1_085, "total": 20_000, "head": 85, "without_head": 1_000}}


def test_written_bytes_are_the_legacy_writers_and_read_back_the_same(tmp_path):
    best = {"epoch": 0, "eval_loss": 1.2, "acc_top1": 0.5}
    checkpoints = {"best": "r/best.pdparams", "final": None, "resume": "r/resume.pdckpt"}
    record = header().with_progress(history=HISTORY, best=best, final=None, checkpoints=checkpoints)
    write_record(record, tmp_path / RUN_RECORD)
    text = (tmp_path / RUN_RECORD).read_text()
    assert text == legacy_json(header().meta(), HISTORY, best, None, checkpoints)
    assert read_record(tmp_path) == record == read_record(tmp_path / RUN_RECORD)
    assert RunRecord.from_dict(json.loads(text)).to_dict() == json.loads(text)


def test_unknown_keys_are_kept_and_missing_header_keys_stay_missing(tmp_path):
    meta = {"stage": "pretrain", "params": {"total": 5}, "k": "v"}  # as tests and older runs pass it
    record = RunRecord.from_dict(meta)
    assert record.extra == {"k": "v"} and record.method is None and record.meta() == meta
    write_record(record.with_progress(history=[], best=None, final=None, checkpoints={"best": None}),
                 tmp_path / RUN_RECORD)
    assert (tmp_path / RUN_RECORD).read_text() == legacy_json(meta, [], None, None, {"best": None})


def test_a_real_run_json_round_trips_byte_for_byte_and_matches_the_resume_meta(tmp_path):
    from ppadapt.runs.resume_file import load_checkpoint
    from ppadapt.training.engine import run_stage

    cfg = load_config(CONFIG_DIR / "digits.yaml", ["model.embed_dim=16", "model.depth=1", "model.num_heads=2",
                                                   "epochs=2", "batch_size=256", "warmup_steps=1"], stage="pretrain")
    cfg.output = str(tmp_path)
    run = run_stage(cfg, "pretrain", log=lambda line: None, verbose=0).run_dir
    record = read_record(run, require=("config", "class_names", "mean", "std", "params"))
    assert (record.stage, record.dataset, record.method, len(record.history)) == ("pretrain", "digits", "full", 2)
    assert record.params["without_head"] == record.params["trainable"] - record.params["head"]
    assert record.final is not None and record.checkpoints["resume"] == str(run / "resume.pdckpt")
    assert load_checkpoint(run / "resume.pdckpt")["meta"] == record.meta()
    original = (run / RUN_RECORD).read_bytes()
    write_record(record, tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_bytes() == original


# --- reading: one line for every problem, each caller's leniency -------------------------------

def old_record(tmp_path: Path, **data) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / RUN_RECORD).write_text(json.dumps(data))
    return run


def one_line(exc) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_old_and_unfinished_records_read(tmp_path):
    run = old_record(tmp_path, stage="pretrain", dataset="digits", class_names=["0"], config={},
                     params={"trainable": 3, "total": 3}, history=[{"epoch": 0}], best=None)
    record = read_record(run, require=("params",))
    assert record.method is None and record.mean is None and record.final is None and record.checkpoints is None
    assert record.history == [{"epoch": 0}]
    assert read_record(old_record(tmp_path)).history == []  # nothing at all: still a record


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "cannot read run record"),
    ("[1, 2]", "is not a ppadapt run record: it holds a list, not a JSON object"),
    ("\"text\"", "holds a string"),
    (json.dumps({"stage": "transfer", "class_names": ["a"]}), "lacks config, mean, std: it was not written"),
    (json.dumps({"config": {}, "class_names": "ab", "mean": [0, 0, 0], "std": None}), "lacks std"),
    (json.dumps({"config": [], "class_names": "ab", "mean": [0, 0, 0], "std": [1, 1, 1]}),
     "config is a list, not an object, class_names is a string, not a list"),
])
def test_unusable_records_are_one_line_errors(tmp_path, content, fragment):
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_RECORD).write_text(content)
    with pytest.raises(CheckpointError) as exc:
        read_record(run, require=("config", "class_names", "mean", "std"))
    message = one_line(exc)
    assert fragment in message and str(run / RUN_RECORD) in message


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read run record .*FileNotFoundError") as exc:
        read_record(tmp_path)
    one_line(exc)


def test_each_reader_keeps_its_leniency(tmp_path):
    from ppadapt.apps.report import load_run as report_run
    from ppadapt.runs.loading import load_run
    from ppadapt.runs.pretrained import PADDLECLAS_MEAN, pretrained_normalization

    # the report: an old record (no method, no head, no mean/std) is fine; no params is DataError
    run = old_record(tmp_path, stage="pretrain", class_names=["0"], params={"trainable": 3, "total": 3})
    summary = report_run(run)
    assert (summary.method, summary.head, summary.finished) == ("full", None, False)
    (run / RUN_RECORD).write_text(json.dumps({"stage": "pretrain"}))
    with pytest.raises(DataError, match="lacks params"):
        report_run(run)
    # rebuilding a model: config, class names, mean and std are needed
    (run / "final.pdparams").write_bytes(b"unused")
    with pytest.raises(CheckpointError, match="lacks config, class_names, mean, std"):
        load_run(run)
    # the normalisation of pretrained weights: only mean/std, and a bad record means "external"
    weights = run / "final.pdparams"
    assert pretrained_normalization(None, weights)[0] == PADDLECLAS_MEAN
    (run / RUN_RECORD).write_text(json.dumps({"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}))
    assert pretrained_normalization(None, weights)[:2] == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    (run / RUN_RECORD).write_text(json.dumps({"mean": [0.1, 0.2], "std": [0.4, 0.5]}))
    assert pretrained_normalization(None, weights)[0] == PADDLECLAS_MEAN


def test_record_path():
    assert record_path("out/run") == Path("out/run") / RUN_RECORD
    assert record_path(Path("out/run") / RUN_RECORD) == Path("out/run") / RUN_RECORD
