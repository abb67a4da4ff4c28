"""``schedule: bit_hyperrule`` (issue 12, "Recipes"): BiT's schedule and MixUp from the size of the
training set: the rule's table, its steps as epochs with exact boundaries, the LR a real run
applies at those steps, run.json's record, an exact ``--resume``, and the config's errors."""
from __future__ import annotations

import json

import numpy as np
import paddle
import pytest

from cifar_archive import write_cifar_archive
from tiny import InterruptAt
from ppadapt.apps.cli import transfer_main
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.data.sampler import EpochBatchSampler, batches_per_epoch
from ppadapt.errors import ConfigError, TrainingInterrupted
from ppadapt.runs.checkpoint import load_state_dict
from ppadapt.training.callbacks.lr_warmup import decay_steps
from ppadapt.training.data_loading import load_datasets, make_loaders
from ppadapt.training.engine import run_stage
from ppadapt.training.hyperrule import BitSchedule, RuleChoice, bit_schedule, resolve_schedule_rule
from ppadapt.training.optim import lr_callback
from ppadapt.training.plan import plan_stage, settle_schedule
from ppadapt.training.resume import prepare_resume

SMALL = BitSchedule(100, (200, 300, 400), 500, 0.0)
MEDIUM = BitSchedule(500, (3_000, 6_000, 9_000), 10_000, 0.1)
LARGE = BitSchedule(500, (6_000, 12_000, 18_000), 20_000, 0.1)
TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
        "model.carry={}", "transfer.pretrained=none"]
RUN = "tutorial_transfer_cifar10_full"


def quiet(line: str) -> None:
    pass


# --- the rule ------------------------------------------------------------------------------

@pytest.mark.parametrize("images,expected", [
    (1, SMALL), (19_999, SMALL), (20_000, MEDIUM), (499_999, MEDIUM), (500_000, LARGE), (14_000_000, LARGE)])
def test_the_rule_at_the_boundary_sizes(images, expected):
    assert bit_schedule(images) == expected
    assert (expected.mixup_alpha > 0) == (images >= 20_000)  # BiT's MixUp: 0.1 from 20k images


def test_no_images_is_no_schedule():
    with pytest.raises(ValueError, match="train_images must be positive"):
        bit_schedule(0)


def test_steps_become_whole_epochs_and_the_decays_land_on_bits_steps():
    exact = RuleChoice(2_500, 25, SMALL)
    assert (exact.epochs, exact.steps, exact.decay_at) == (20, 500, [0.4, 0.6, 0.8])
    # CIFAR at 512: 98 batches an epoch, 103 epochs; the 94 steps past BiT's 10k at the last LR
    cifar = RuleChoice(50_000, batches_per_epoch(50_000, 512), MEDIUM)
    assert (cifar.batches_per_epoch, cifar.epochs, cifar.steps) == (98, 103, 10_094)
    assert decay_steps(cifar.steps, cifar.decay_at) == [3_000, 6_000, 9_000]
    for schedule in (SMALL, MEDIUM, LARGE):  # any epoch length: the fractions round back to the steps
        for per_epoch in range(1, schedule.end + 2, 7):
            choice = RuleChoice(1, per_epoch, schedule)
            assert choice.steps >= schedule.end > choice.steps - per_epoch
            assert decay_steps(choice.steps, choice.decay_at) == list(schedule.decays)


def test_batches_per_epoch_is_the_samplers_with_several_processes():
    for n, batch, ranks in [(50_000, 512, 1), (50_000, 256, 2), (101, 8, 3), (7, 8, 1), (2_500, 100, 4)]:
        assert batches_per_epoch(n, batch, ranks) == len(EpochBatchSampler(n, batch, 0, num_replicas=ranks))
    assert batches_per_epoch(50_000, 256, 2) == 98  # the global batch of 512: BiT's steps on CIFAR


def test_the_rule_becomes_a_plain_step_decay_config():
    cfg = load_config(CONFIG_DIR / "bit_hyperrule.yaml", stage="transfer")
    lines = []
    small, record = resolve_schedule_rule(cfg, "transfer", 19_999, 40, lines.append)
    t = small.transfer
    assert (t.schedule, t.epochs, t.warmup_steps, t.warmup_epochs, t.decay_at, t.mixup_alpha) == \
        ("step_decay", 13, 100, None, [200 / 520, 300 / 520, 400 / 520], 0.0)
    assert lines == ["transfer.schedule bit_hyperrule: 19,999 training images (< 20k): 500 steps -> 13 epochs of 40 "
                     "batches (520 steps, the last 20 at the final LR), warm-up 100, LR x0.1 at steps 200, 300, 400; "
                     "MixUp off"]
    assert record == {"rule": "bit_hyperrule", "train_images": 19_999, "batches_per_epoch": 40, "epochs": 13,
                      "steps": 520, "bit_steps": 500, "warmup_steps": 100, "decay_steps": [200, 300, 400],
                      "mixup_alpha": 0.0}
    assert cfg.transfer.schedule == "bit_hyperrule"  # the loaded config is left as it was
    medium, record = resolve_schedule_rule(cfg, "transfer", 20_000, 40, lines.append)
    assert (medium.transfer.epochs, medium.transfer.warmup_steps, medium.transfer.mixup_alpha) == (250, 500, 0.1)
    assert lines[-1].startswith("transfer.schedule bit_hyperrule: 20,000 training images (20k to 500k): 10,000 steps "
                                "= 250 epochs of 40 batches, warm-up 500, LR x0.1 at steps 3,000, 6,000, 9,000; "
                                "MixUp alpha 0.1")
    large, record = resolve_schedule_rule(cfg, "transfer", 500_000, 977, lines.append)
    assert (record["decay_steps"], record["epochs"], large.transfer.mixup_alpha) == ([6_000, 12_000, 18_000], 21, 0.1)
    assert "(>= 500k)" in lines[-1]
    # the schedule callback the trainer builds from it: BiT's LR at BiT's steps
    sched = lr_callback(small, "transfer", 40, nranks=1)
    base = 0.0015 * 512 / 256
    assert sched.base_lr == pytest.approx(0.003) and sched.total_steps == 520
    assert [sched._lr_at(s, 0) for s in (99, 199, 200, 299, 300, 399, 400, 519)] == pytest.approx(
        [base, base, base / 10, base / 10, base / 100, base / 100, base / 1000, base / 1000])
    # another schedule is left alone
    plain = load_config(None, [], stage="transfer")
    assert resolve_schedule_rule(plain, "transfer", 19_999, 40, lines.append) == (plain, None)


def test_an_unresolved_rule_builds_no_schedule():
    cfg = load_config(CONFIG_DIR / "bit_hyperrule.yaml", stage="transfer")
    with pytest.raises(ConfigError, match="transfer.schedule bit_hyperrule is decided from the training set"):
        lr_callback(cfg, "transfer", 10, nranks=1)


def test_mixup_that_the_rule_turns_on_needs_two_images_a_batch():
    cfg = load_config(CONFIG_DIR / "bit_hyperrule.yaml", ["transfer.batch_size=1"], stage="transfer")
    resolve_schedule_rule(cfg, "transfer", 19_999, 19_999, quiet)  # no MixUp: batch 1 is fine
    with pytest.raises(ConfigError) as exc:
        resolve_schedule_rule(cfg, "transfer", 20_000, 20_000, quiet)
    assert str(exc.value) == ("transfer.schedule bit_hyperrule turns MixUp on for 20,000 training images (20k or "
                              "more), and MixUp needs at least 2 images per batch: raise transfer.batch_size (1 now)")


# --- the config ----------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,key,source", [
    (["transfer.epochs=3"], "epochs", "-o"),
    (["mixup_alpha=0.2"], "mixup_alpha", "-o"),
    (["transfer.warmup_steps=10"], "warmup_steps", "-o"),
    (["transfer.decay_at=[0.5]"], "decay_at", "-o"),
    (["transfer.warmup_steps=null", "transfer.warmup_epochs=1"], "warmup_steps", "-o"),
])
def test_a_key_the_rule_sets_is_one_config_error(overrides, key, source):
    with pytest.raises(ConfigError) as exc:
        load_config(CONFIG_DIR / "bit_hyperrule.yaml", overrides, stage="transfer")
    assert str(exc.value) == (
        f"transfer.schedule bit_hyperrule sets transfer.{key} from the size of the training set, but {source} sets it "
        f"too: drop transfer.{key} there, or set the schedule yourself (-o transfer.schedule=step_decay with epochs, "
        "warmup_steps, decay_at and mixup_alpha)")


def test_the_rule_replaces_what_an_earlier_source_set(tmp_path):
    # tutorial.yaml sets epochs and warmup_steps; -o switching to the rule replaces them
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", ["transfer.schedule=bit_hyperrule"], stage="transfer")
    assert cfg.transfer.schedule == "bit_hyperrule"
    # in the same file, or later, they are refused
    both = tmp_path / "both.yaml"
    both.write_text("transfer:\n  schedule: bit_hyperrule\n  epochs: 102\n")
    with pytest.raises(ConfigError, match=f"but {both} sets it too: drop transfer.epochs there"):
        load_config(both, stage="transfer")
    with pytest.raises(ConfigError, match="but -o sets it too"):
        load_config(CONFIG_DIR / "tutorial.yaml", ["transfer.epochs=3", "transfer.schedule=bit_hyperrule"],
                    stage="transfer")
    # a rule in the other stage does not concern this one's keys
    load_config(None, ["pretrain.schedule=bit_hyperrule", "transfer.epochs=3"], stage="transfer")


def test_the_command_line_says_it_in_one_line(capsys):
    preset = ["--config", str(CONFIG_DIR / "bit_hyperrule.yaml"), "--pretrained", "none", "--dry-run",
              *[a for o in TINY[:5] for a in ("-o", o)]]
    assert transfer_main([*preset, "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: transfer.schedule bit_hyperrule sets transfer.epochs from the size of the training "
                          "set, but the command line sets it too")
    assert transfer_main([*preset, "-o", "transfer.schedule=step_decay", "--epochs", "5"]) == 0  # set by hand
    assert transfer_main([*preset, "-o", "schedule=warmup"]) == 2
    assert "transfer.schedule must be one of" in capsys.readouterr().err


# --- real runs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """4 classes of 100 images: 400 training images, 67 batches of 6 an epoch (8 epochs for 500 steps)."""
    return write_cifar_archive(tmp_path_factory.mktemp("bit") / "cifar-10-python.tar.gz", "cifar10",
                               train_per_class=100, test_per_class=1)


def tiny_config(out, archive, *extra):
    return load_config(CONFIG_DIR / "tutorial.yaml",
                       [*TINY, "transfer.dataset=cifar10", f"transfer.data_file={archive}",
                        "transfer.classes=[0, 1, 2, 3]", "transfer.schedule=bit_hyperrule", "transfer.batch_size=6", "transfer.lr=0.1",
                        "transfer.augmentation=none", f"output={out}", *extra], stage="transfer")


class LRs(paddle.callbacks.Callback):
    """The LR each batch trains with (ppadapt's schedule callback has set it before this runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.lrs = []

    def on_train_batch_begin(self, step, logs=None) -> None:
        self.lrs.append(self.model._optimizer.get_lr())


def history(run_dir):
    record = json.loads((run_dir / "run.json").read_text())
    return [{k: v for k, v in e.items() if not k.endswith("_seconds")} for e in record["history"]]


def test_a_run_trains_bits_schedule_and_resumes_exactly(tmp_path, archive, capsys):
    lines, lrs = [], LRs()
    run_stage(tiny_config(tmp_path / "ref", archive), "transfer", log=lines.append, verbose=0, callbacks=[lrs])
    assert ("transfer.schedule bit_hyperrule: 400 training images (< 20k): 500 steps -> 8 epochs of 67 batches "
            "(536 steps, the last 36 at the final LR), warm-up 100, LR x0.1 at steps 200, 300, 400; MixUp off") in lines
    lr = np.array(lrs.lrs)
    assert len(lr) == 536
    np.testing.assert_allclose(lr[:100], 0.1 * np.arange(1, 101) / 100, rtol=1e-6)  # the warm-up, 100 steps
    for first, last, value in [(100, 199, 0.1), (200, 299, 0.01), (300, 399, 0.001), (400, 535, 0.0001)]:
        np.testing.assert_allclose(lr[first:last + 1], value, rtol=1e-6)  # each LR from its boundary step on

    record = json.loads((tmp_path / "ref" / RUN / "run.json").read_text())
    t = record["config"]["transfer"]
    assert (t["schedule"], t["epochs"], t["warmup_steps"], t["warmup_epochs"], t["decay_at"], t["mixup_alpha"]) == \
        ("step_decay", 8, 100, None, [200 / 536, 300 / 536, 400 / 536], 0.0)
    assert record["schedule_rule"] == {"rule": "bit_hyperrule", "train_images": 400, "batches_per_epoch": 67,
                                       "epochs": 8, "steps": 536, "bit_steps": 500, "warmup_steps": 100,
                                       "decay_steps": [200, 300, 400], "mixup_alpha": 0.0}
    assert len(record["history"]) == 8

    # Ctrl-C in batch 35 of epoch 4 (it stops after that batch, step 235, between two decays) and
    # resumed: the run the uninterrupted one was
    cfg = tiny_config(tmp_path / "cut", archive)
    with pytest.raises(TrainingInterrupted, match="at epoch 4/8, batch 35/67"):
        run_stage(cfg, "transfer", log=quiet, verbose=0, callbacks=[InterruptAt(3, 34)])
    lines, lrs = [], LRs()
    run_stage(cfg, "transfer", log=lines.append, verbose=0, resume=True, callbacks=[lrs])
    assert not any("bit_hyperrule" in line for line in lines)  # the checkpoint holds the schedule
    np.testing.assert_array_equal(np.array(lrs.lrs), lr[3 * 67 + 35:])
    for name in ("final.pdparams", "best.pdparams"):
        ref, cut = (load_state_dict(str(tmp_path / d / RUN / name)) for d in ("ref", "cut"))
        assert ref.keys() == cut.keys() and all(np.array_equal(np.array(ref[k]), np.array(cut[k])) for k in ref)
    assert history(tmp_path / "cut" / RUN) == history(tmp_path / "ref" / RUN)
    resumed = json.loads((tmp_path / "cut" / RUN / "run.json").read_text())
    assert resumed["schedule_rule"] == record["schedule_rule"]
    assert resumed["config"]["transfer"] == record["config"]["transfer"]

    # --resume with the rule named again on the command line continues the run; another schedule does not
    point = prepare_resume(cfg, "transfer", tmp_path / "cut" / RUN, explicit=["transfer.schedule"])
    assert point.finished and point.cfg.transfer.schedule == "step_decay"
    command = [a for o in (*TINY, "transfer.classes=[0, 1, 2, 3]", "transfer.batch_size=6", "transfer.lr=0.1",
                           "transfer.augmentation=none", "transfer.schedule=bit_hyperrule") for a in ("-o", o)]
    assert transfer_main(["--dataset", "cifar10", "--data-file", str(archive), "--output", str(tmp_path / "cut"),
                          "--quiet", *command, "--resume"]) == 0
    assert f"nothing to resume: {tmp_path / 'cut' / RUN} finished all 8 epochs" in capsys.readouterr().out
    other = tiny_config(tmp_path / "cut", archive, "transfer.schedule=warmup_step_cosine")
    with pytest.raises(ConfigError, match="transfer.schedule is 'step_decay' in .* and 'warmup_step_cosine'"):
        prepare_resume(other, "transfer", tmp_path / "cut" / RUN, explicit=["transfer.schedule"])


def test_mixup_follows_the_number_of_training_images(tmp_path, archive):
    """The loaders of a plan the rule settled: MixUp's soft targets from 20k images on (the
    count given here; the 400 images loaded make one batch each), hard labels below."""
    plan = plan_stage(tiny_config(tmp_path, archive, "transfer.batch_size=400"), "transfer", log=quiet)
    datasets = load_datasets(plan, quiet)
    for images, alpha, shape in [(len(datasets.train), 0.0, [400, 1]), (20_000, 0.1, [400, 4])]:
        settled = settle_schedule(plan, images, 1, quiet)
        assert settled.cfg.transfer.mixup_alpha == alpha and settled.schedule_rule["train_images"] == images
        data = make_loaders(settled, datasets, 0, 1)
        data.sampler.set_epoch(0)
        _, targets = next(iter(data.train_loader))
        assert targets.shape == shape
