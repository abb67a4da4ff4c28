"""The training stage as a pipeline (issue 11): the public ``callbacks=`` seam, the plan that
decides fresh against resumed once, and no test-only hooks left in the library."""
from pathlib import Path

import numpy as np
import paddle
import pytest

from cifar_archive import write_cifar_archive
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.runs.checkpoint import atomic_save, load_state_dict
from ppadapt.training.engine import run_stage
from ppadapt.training.plan import plan_stage
from ppadapt.runs.resume_file import FORMAT, load_checkpoint

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8", "adapter.bottleneck=8",
        "warmup_steps=2", "batch_size=16", "epochs=2", "augment=false"]


class Recorder(paddle.callbacks.Callback):
    """What an extra callback sees of a run."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs, self.batches, self.weights = [], 0, None

    def on_train_batch_end(self, step, logs=None) -> None:
        self.batches += 1

    def on_epoch_end(self, epoch=None, logs=None) -> None:
        self.epochs.append(epoch)

    def on_train_end(self, logs=None) -> None:
        self.weights = {k: v.numpy().copy() for k, v in self.model.network.state_dict().items()}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A finished 2-epoch pretraining run, with a recording callback."""
    root = tmp_path_factory.mktemp("pipeline")
    archive = write_cifar_archive(root / "cifar-10-python.tar.gz", "cifar10", train_per_class=4, test_per_class=2)
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", [*TINY, "pretrain.dataset=cifar10",
                                                      f"pretrain.data_file={archive}", f"output={root / 'out'}"],
                      stage="pretrain")
    recorder = Recorder()
    result = run_stage(cfg, "pretrain", verbose=0, log=lambda line: None, callbacks=[recorder])
    return cfg, result, recorder, archive


def test_extra_callbacks_see_every_epoch_and_the_trained_network(pretrained):
    cfg, result, recorder, _ = pretrained
    assert recorder.epochs == [0, 1] and recorder.batches == 2 * 3  # 40 images in batches of 16
    final = load_state_dict(str(result.run_dir / "final.pdparams"))
    assert final.keys() == recorder.weights.keys()
    assert all(np.array_equal(np.asarray(final[k]), recorder.weights[k]) for k in final)


def test_the_plan_decides_fresh_or_resumed_once(pretrained):
    cfg, result, _, _ = pretrained
    fresh = plan_stage(cfg, "pretrain")
    assert (fresh.resumed, fresh.finished, fresh.start_epoch, fresh.skip) == (False, False, 0, 0)
    assert fresh.run_dir == result.run_dir and fresh.normalization is None and fresh.saved == {}
    resumed = plan_stage(cfg, "pretrain", resume=result.run_dir)
    assert resumed.resumed and resumed.finished and resumed.start_epoch == 2
    assert resumed.cfg.to_dict() == cfg.to_dict()
    transfer_cfg = load_config(CONFIG_DIR / "tutorial.yaml", [*TINY, "pretrain.dataset=cifar10", "output=" + cfg.output],
                               stage="transfer")
    transfer = plan_stage(transfer_cfg, "transfer", log=lambda line: None)
    assert transfer.pretrained == result.run_dir / "final.pdparams"  # this config's pretraining run
    assert transfer.normalization[2] and len(transfer.normalization[0]) == 3  # as the backbone's run.json says


def test_a_finished_run_resumed_trains_nothing(pretrained):
    cfg, result, _, _ = pretrained
    before = (result.run_dir / "final.pdparams").read_bytes()
    recorder = Recorder()
    again = run_stage(cfg, "pretrain", resume=True, log=lambda line: None, callbacks=[recorder])
    assert recorder.batches == 0 and again.history == result.history
    assert (result.run_dir / "final.pdparams").read_bytes() == before


def test_resume_files_keep_their_format_name(tmp_path):
    # Checkpoints written since issue 6 say "ppadapt.resume"; moving modules must not change it.
    assert FORMAT == "ppadapt.resume"
    atomic_save({"format": "ppadapt.resume", "version": 1, "stage": "pretrain"}, str(tmp_path / "resume.pdckpt"))
    assert load_checkpoint(tmp_path / "resume.pdckpt", "pretrain")["format"] == "ppadapt.resume"


def test_no_test_hooks_in_the_library():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "ppadapt").rglob("*.py")
                 if "PPADAPT_TEST" in p.read_text(encoding="utf-8")]
    assert not offenders
