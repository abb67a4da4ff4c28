"""MixUp / CutMix (issue 12): the batch mixer, the soft-target loss, the loaders, a real
training stage that learns with it and resumes bit-identically, and the config's checks."""
from __future__ import annotations


import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from cifar_archive import write_cifar_archive
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.data.mixing import BatchMixer, cutmix_box
from ppadapt.data.sampler import EpochBatchSampler, SeededDataset
from ppadapt.errors import ConfigError, TrainingInterrupted
from ppadapt.runs.checkpoint import load_state_dict
from ppadapt.training.data_loading import load_datasets, make_loaders
from ppadapt.training.engine import run_stage
from ppadapt.training.mixing import SoftTargetLoss, soft_target_loss
from ppadapt.training.plan import plan_stage
from tiny import InterruptAt


def batch(n=8, classes=4, size=16, epoch=2, index=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    samples = [(images[i], np.array([labels[i]], dtype=np.int64), np.array([epoch, index], dtype=np.int64))
               for i in range(n)]
    return images, labels, samples


def first_draw(mixer, kind, n=8, size=16):
    """(epoch, batch, draw) of the first batch position whose draw is ``kind``."""
    for position in range(100):
        draw = mixer.draw(1, position, n, size, size)
        if draw.kind == kind:
            return 1, position, draw
    raise AssertionError(f"no {kind} draw")


def test_mixup_blends_images_and_labels_with_the_same_lam():
    mixer = BatchMixer(4, seed=3, mixup_alpha=0.4)
    images, labels, samples = batch(epoch=2, index=5)
    draw = mixer.draw(2, 5, 8, 16, 16)
    assert draw.kind == "mixup" and 0.0 < draw.lam < 1.0 and sorted(draw.perm) == list(range(8))
    mixed, targets = mixer(samples)
    lam = np.float32(draw.lam)
    np.testing.assert_array_equal(mixed, lam * images + (np.float32(1) - lam) * images[draw.perm])
    assert mixed.dtype == np.float32 and targets.dtype == np.float32 and targets.shape == (8, 4)
    for i in range(8):
        expected = np.zeros(4, dtype=np.float32)
        expected[labels[i]] += draw.lam
        expected[labels[draw.perm[i]]] += 1.0 - draw.lam
        np.testing.assert_allclose(targets[i], expected, rtol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)


def test_cutmix_pastes_a_box_whose_area_matches_lam():
    mixer = BatchMixer(4, seed=3, cutmix_alpha=1.0)
    for trial in range(5):
        epoch, position, draw = first_draw(BatchMixer(4, seed=trial, cutmix_alpha=1.0), "cutmix")
        mixer = BatchMixer(4, seed=trial, cutmix_alpha=1.0)
        images, labels, samples = batch(epoch=epoch, index=position, seed=trial)
        mixed, targets = mixer(samples)
        top, left, bottom, right = draw.box
        area = (bottom - top) * (right - left)
        assert draw.lam == pytest.approx(1.0 - area / 256.0)  # lam is the share of each image left as it was
        inside = np.zeros((16, 16), dtype=bool)
        inside[top:bottom, left:right] = True
        np.testing.assert_array_equal(mixed[:, :, inside], images[draw.perm][:, :, inside])
        np.testing.assert_array_equal(mixed[:, :, ~inside], images[:, :, ~inside])
        own = targets[np.arange(8), labels]
        same = labels == labels[draw.perm]
        np.testing.assert_allclose(own[~same], draw.lam, rtol=1e-6)
        np.testing.assert_allclose(own[same], 1.0, rtol=1e-6)


def test_cutmix_box_is_the_requested_share_unless_clipped():
    rng = np.random.default_rng(0)
    for lam in (0.1, 0.5, 0.75, 0.96):
        for _ in range(50):
            top, left, bottom, right = cutmix_box(lam, 32, 32, rng)
            assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
            side = int(32 * np.sqrt(1 - lam))
            assert bottom - top <= side and right - left <= side
            if top > 0 and left > 0 and bottom < 32 and right < 32:  # not clipped: the full box
                assert (bottom - top, right - left) == (side // 2 * 2, side // 2 * 2)


def test_draws_depend_on_seed_epoch_batch_and_rank_only():
    mixer = BatchMixer(10, seed=7, mixup_alpha=0.5, cutmix_alpha=1.0)

    def key(draw):
        return draw.kind, draw.lam, tuple(draw.perm), draw.box

    first = key(mixer.draw(3, 4, 16, 32, 32))
    np.random.seed(1)
    np.random.random(5)  # the global generator plays no part
    for other in range(10):
        mixer.draw(3, other, 16, 32, 32)
    assert key(BatchMixer(10, seed=7, mixup_alpha=0.5, cutmix_alpha=1.0).draw(3, 4, 16, 32, 32)) == first
    assert key(mixer.draw(3, 4, 16, 32, 32)) == first
    others = [mixer.draw(4, 4, 16, 32, 32), mixer.draw(3, 5, 16, 32, 32),
              BatchMixer(10, seed=7, mixup_alpha=0.5, cutmix_alpha=1.0, rank=1).draw(3, 4, 16, 32, 32),
              BatchMixer(10, seed=8, mixup_alpha=0.5, cutmix_alpha=1.0).draw(3, 4, 16, 32, 32)]
    assert all(key(d) != first for d in others)


def test_mix_prob_and_the_mixup_cutmix_switch():
    both = BatchMixer(5, seed=0, mixup_alpha=0.2, cutmix_alpha=1.0)
    kinds = [both.draw(0, b, 8, 16, 16).kind for b in range(400)]
    assert 150 < kinds.count("cutmix") < 250 and kinds.count("mixup") + kinds.count("cutmix") == 400
    half = BatchMixer(5, seed=0, mixup_alpha=0.2, mix_prob=0.5)
    mixed = sum(half.draw(0, b, 8, 16, 16).kind == "mixup" for b in range(400))
    assert 150 < mixed < 250
    never = BatchMixer(5, seed=0, mixup_alpha=0.2, mix_prob=0.0)
    images, labels, samples = batch(classes=5)
    out, targets = never(samples)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(targets, np.eye(5, dtype=np.float32)[labels])  # one-hot, still float


def test_soft_target_loss_takes_soft_targets_and_leaves_hard_labels_to_the_stage_loss():
    paddle.seed(0)
    logits = paddle.randn([6, 4])
    hard = paddle.to_tensor(np.array([[0], [1], [2], [3], [1], [0]], dtype=np.int64))
    loss = SoftTargetLoss(paddle.nn.CrossEntropyLoss())
    np.testing.assert_allclose(loss(logits, hard).numpy(), paddle.nn.CrossEntropyLoss()(logits, hard).numpy())
    one_hot = paddle.to_tensor(np.eye(4, dtype=np.float32)[hard.numpy()[:, 0]])
    np.testing.assert_allclose(loss(logits, one_hot).numpy(), loss(logits, hard).numpy(), rtol=1e-6)
    soft = np.random.default_rng(0).dirichlet(np.ones(4), 6).astype(np.float32)
    expected = -(soft * F.log_softmax(logits, axis=-1).numpy()).sum(axis=1).mean()
    np.testing.assert_allclose(loss(logits, paddle.to_tensor(soft)).numpy(), expected, rtol=1e-5)
    smoothed = SoftTargetLoss(paddle.nn.CrossEntropyLoss(), smoothing=0.1)
    target = soft * 0.9 + 0.1 / 4
    expected = -(target * F.log_softmax(logits, axis=-1).numpy()).sum(axis=1).mean()
    np.testing.assert_allclose(smoothed(logits, paddle.to_tensor(soft)).numpy(), expected, rtol=1e-5)
    plain = load_config(CONFIG_DIR / "digits.yaml").pretrain
    base = paddle.nn.CrossEntropyLoss()
    assert soft_target_loss(base, plain) is base  # mixing off: the stage's loss as it is


def test_train_accuracy_of_soft_targets_is_that_of_their_larger_share():
    metric = paddle.metric.Accuracy()
    logits = paddle.to_tensor(np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 5.0]], dtype=np.float32))
    soft = paddle.to_tensor(np.array([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6], [0.0, 0.45, 0.55]], dtype=np.float32))
    assert metric.compute(logits, soft).numpy().ravel().tolist() == [1.0, 0.0, 1.0]


def test_batch_keys_carry_each_batchs_position_through_the_dataset():
    sampler = EpochBatchSampler(10, 4, seed=1, batch_keys=True)
    sampler.set_epoch(3, skip=1)
    batches = list(sampler)
    assert [{b for _, _, b in keys} for keys in batches] == [{1}, {2}]  # counted from the epoch's start
    assert all(e == 3 for keys in batches for e, _, _ in keys)
    plain = EpochBatchSampler(10, 4, seed=1)
    plain.set_epoch(3, skip=1)
    assert [[k[:2] for k in keys] for keys in batches] == list(plain)

    from ppadapt.data import ArrayDataset, TrainTransform

    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    seeded = SeededDataset(ArrayDataset(images, np.arange(10) % 2, TrainTransform(16, (0.5,) * 3, (0.5,) * 3)), 0)
    image, label, tag = seeded[(3, 6, 2)]
    np.testing.assert_array_equal(image, seeded[(3, 6)][0])
    assert tag.tolist() == [3, 2] and label.tolist() == [0]


# --- in a training stage -----------------------------------------------------------------

TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.carry.adaptformer.bottleneck=8",
        "model.drop_path_rate=0.1", "pretrain.epochs=5", "pretrain.batch_size=16", "pretrain.warmup_steps=4",
        "pretrain.augment=true", "pretrain.augmentation=crop_flip", "pretrain.mixup_alpha=0.2",
        "pretrain.cutmix_alpha=1.0"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """4 learnable classes (colour and stripes under noise), 12 training images each: 3 batches of 16."""
    return write_cifar_archive(tmp_path_factory.mktemp("mix") / "cifar-10-python.tar.gz", "cifar10",
                               train_per_class=12, test_per_class=4)


def tiny_config(out, archive, *extra):
    return load_config(CONFIG_DIR / "tutorial.yaml",
                       [*TINY, "model.patch_size=8", "model.drop_border=false", "pretrain.dataset=cifar10",
                        f"pretrain.data_file={archive}", "pretrain.classes=[0, 1, 2, 3]", f"output={out}", *extra],
                       stage="pretrain")


def test_the_train_loader_mixes_and_the_eval_loader_does_not(tmp_path, archive):
    plan = plan_stage(tiny_config(tmp_path, archive, "pretrain.batch_size=64"), "pretrain")
    datasets = load_datasets(plan, lambda line: None)
    data = make_loaders(plan, datasets, 0, 1)
    data.sampler.set_epoch(0)
    images, targets = next(iter(data.train_loader))
    assert images.shape == [48, 3, 32, 32] and targets.shape == [48, 4] and targets.dtype == paddle.float32
    np.testing.assert_allclose(targets.numpy().sum(axis=1), 1.0, rtol=1e-5)
    images, labels = next(iter(data.test_loader))
    assert labels.shape == [16, 1] and labels.dtype == paddle.int64
    plain = plan_stage(load_config(CONFIG_DIR / "digits.yaml", [f"output={tmp_path}"], stage="pretrain"), "pretrain")
    data = make_loaders(plain, load_datasets(plain, lambda line: None), 0, 1)
    data.sampler.set_epoch(0)
    assert next(iter(data.sampler))[0] == (0, next(iter(data.sampler))[0][1])  # (epoch, index) keys as before
    _, labels = next(iter(data.train_loader))
    assert labels.dtype == paddle.int64 and labels.shape == [32, 1]


def weights(run_dir, name="final.pdparams"):
    return {k: np.asarray(v) for k, v in load_state_dict(str(run_dir / name)).items()}


def test_a_mixup_run_learns_and_resumes_bit_identically(tmp_path, archive):
    quiet = dict(verbose=0, log=lambda line: None)
    reference = run_stage(tiny_config(tmp_path / "ref", archive), "pretrain", **quiet)
    losses = [e["train_loss"] for e in reference.history]
    assert len(losses) == 5 and all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.2
    assert reference.history[-1]["acc_top1"] >= 0.75  # 4 classes: chance is 0.25

    cfg = tiny_config(tmp_path / "cut", archive)
    with pytest.raises(TrainingInterrupted):
        run_stage(cfg, "pretrain", callbacks=[InterruptAt(2, 1)], **quiet)  # mid-epoch 3, after 1 of 3 batches
    assert not (tmp_path / "cut" / reference.run_dir.name / "final.pdparams").exists()
    resumed = run_stage(cfg, "pretrain", resume=True, **quiet)
    ref, mine = weights(reference.run_dir), weights(resumed.run_dir)
    assert ref.keys() == mine.keys() and all(np.array_equal(ref[k], mine[k]) for k in ref)
    strip = [{k: v for k, v in e.items() if not k.endswith("_seconds")} for e in reference.history]
    assert [{k: v for k, v in e.items() if not k.endswith("_seconds")} for e in resumed.history] == strip


# --- config ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["pretrain.mixup_alpha=0.2", "pretrain.batch_size=1"],
     "MixUp needs at least 2 images per batch: pretrain.batch_size is 1 (raise it, or set pretrain.mixup_alpha "
     "and pretrain.cutmix_alpha to 0)"),
    (["transfer.cutmix_alpha=1.0", "transfer.batch_size=1"],
     "MixUp needs at least 2 images per batch: transfer.batch_size is 1 (raise it, or set transfer.mixup_alpha "
     "and transfer.cutmix_alpha to 0)"),
    (["pretrain.mixup_alpha=-0.2"],
     "pretrain.mixup_alpha must not be negative, got -0.2 (0 turns it off; e.g. -o pretrain.mixup_alpha=0.8)"),
    (["transfer.cutmix_alpha=-1"],
     "transfer.cutmix_alpha must not be negative, got -1.0 (0 turns it off; e.g. -o transfer.cutmix_alpha=0.8)"),
    (["pretrain.mix_prob=1.5"],
     "pretrain.mix_prob must be in [0, 1], got 1.5 (the chance that a batch is mixed; e.g. -o pretrain.mix_prob=1.0)"),
    (["transfer.mix_prob=-0.1"],
     "transfer.mix_prob must be in [0, 1], got -0.1 (the chance that a batch is mixed; e.g. -o "
     "transfer.mix_prob=1.0)"),
])
def test_bad_mixing_values_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(CONFIG_DIR / "tutorial.yaml", overrides)
    assert str(excinfo.value) == message
    load_config(CONFIG_DIR / "tutorial.yaml", ["pretrain.batch_size=1"])  # batch size 1 is fine without mixing
