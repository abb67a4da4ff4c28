"""Configurable augmentation (issue 12): the training pipelines, the evaluation resize and
BiT's resolution rule, through their real code and the config's checks."""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from cifar_archive import write_cifar_archive, write_image_folder
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.config.schema import AUGMENTATIONS as CONFIG_AUGMENTATIONS, EVAL_RESIZES as CONFIG_EVAL_RESIZES
from ppadapt.data import build_datasets
from ppadapt.data.resolution import bit_sizes, resolve_resolution, stored_image_size
from ppadapt.data.sampler import SeededDataset
from ppadapt.data.transforms import (AUGMENTATIONS, EVAL_RESIZES, CropFlipTransform, EvalTransform, Pipeline,
                                     RandomResizedCropFlip, TrainTransform, resize_center_crop)
from ppadapt.errors import ConfigError
from ppadapt.training.data_loading import stage_pipeline

HALF = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def cifar10_file(tmp_path_factory):
    return write_cifar_archive(tmp_path_factory.mktemp("aug") / "cifar-10-python.tar.gz",
                               train_per_class=2, test_per_class=1)


def image(size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def pixels(out: np.ndarray) -> np.ndarray:
    """A normalised (0.5 / 0.5) CHW output back as HWC values 0..255."""
    return (out.transpose(1, 2, 0) * 0.5 + 0.5) * 255.0


def train_transform(name: str, size: int = 32, flip: bool = True):
    return Pipeline(name).transforms(size, HALF, HALF, flip=flip)[0]


def test_the_config_and_the_data_layer_name_the_same_pipelines():
    assert CONFIG_AUGMENTATIONS == AUGMENTATIONS and CONFIG_EVAL_RESIZES == EVAL_RESIZES


@pytest.mark.parametrize("name,size", [("tutorial", 32), ("crop_flip", 32), ("rrc_flip", 32), ("rrc_flip", 56),
                                       ("crop_flip", 24), ("none", 48)])
def test_each_pipeline_gives_normalised_float32_chw_at_the_model_size(name, size):
    transform = train_transform(name, size)
    src = image(32)
    for index in range(5):
        out = transform(src, rng=np.random.default_rng([1, 0, index])) if name != "none" else transform(src)
        assert out.shape == (3, size, size) and out.dtype == np.float32 and out.flags.c_contiguous
        assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6  # 0..255 through mean = std = 0.5
    assert src.shape == (32, 32, 3) and src.dtype == np.uint8


def test_default_pipeline_is_the_tutorial_chain_and_augment_false_is_none():
    train, evaluate = Pipeline().transforms(32, HALF, HALF, flip=False)
    assert type(train) is TrainTransform and train.flip is False and train.padding == 4
    assert type(evaluate) is EvalTransform and evaluate.img_size == 32 and not evaluate.center_crop
    for pipeline, augment in ((Pipeline("crop_flip"), False), (Pipeline("none"), True)):
        train, evaluate = pipeline.transforms(32, HALF, HALF, augment=augment)
        assert train is evaluate


@pytest.mark.parametrize("name", ["tutorial", "crop_flip", "rrc_flip"])
def test_per_sample_draws_depend_on_seed_epoch_and_index_only(name):
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    from ppadapt.data import ArrayDataset

    seeded = SeededDataset(ArrayDataset(images, np.arange(12) % 3, train_transform(name)), seed=5)
    first = seeded[(2, 7)][0]
    np.random.seed(99)
    seeded[(2, 8)]  # neither the global generator nor other samples play a part
    assert np.array_equal(seeded[(2, 7)][0], first)
    assert not np.array_equal(seeded[(3, 7)][0], first)  # another epoch, another draw


def test_crop_flip_is_a_padded_shifted_window_optionally_mirrored():
    src = image(32, seed=3)
    transform = CropFlipTransform(32, HALF, HALF)
    padded = cv2.copyMakeBorder(src, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=0).astype(np.float64)
    flips = 0
    for seed in range(30):
        out = pixels(transform(src, rng=np.random.default_rng(seed)))
        u = np.random.default_rng(seed).random(3)
        top, left = int(u[0] * 9), int(u[1] * 9)
        window = padded[top:top + 32, left:left + 32]
        if u[2] < 0.5:
            window, flips = window[:, ::-1], flips + 1
        np.testing.assert_allclose(out, window, atol=1e-3)
    assert 0 < flips < 30
    no_flip = CropFlipTransform(32, HALF, HALF, flip=False)
    ramp = np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 1, 3))
    for seed in range(10):  # digits: never mirrored
        row = pixels(no_flip(ramp, rng=np.random.default_rng(seed)))[16, :, 0]
        inside = row[row > 0]
        assert np.all(np.diff(inside) > 0)


def test_rrc_boxes_stay_within_the_scale_and_ratio_bounds():
    transform = RandomResizedCropFlip(32, HALF, HALF)
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(400):
        top, left, h, w = transform.crop_box(32, 32, rng)
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 32 and h > 0 and w > 0
        fractions.append(h * w / 1024.0)
    fractions = np.array(fractions)
    # rounding of the sides moves the area a little around [0.08, 1]
    assert fractions.min() >= 0.06 and fractions.max() <= 1.0 and fractions.min() < 0.15 and fractions.max() > 0.8
    big = RandomResizedCropFlip(224, HALF, HALF)
    for _ in range(200):
        top, left, h, w = big.crop_box(500, 400, rng)
        assert 0.08 * 0.97 <= h * w / 200000.0 <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
        assert top + h <= 500 and left + w <= 400
    narrow = RandomResizedCropFlip(32, HALF, HALF, scale=(1.0, 1.0))  # never fits a 4:1 image: centre fallback
    assert narrow.crop_box(100, 400, rng) == (0, 133, 100, 133)


def test_rrc_output_is_the_box_resized():
    src = image(32, seed=4)
    transform = RandomResizedCropFlip(64, HALF, HALF, flip=False)
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    out = pixels(transform(src, rng=rng_a))
    top, left, h, w = transform.crop_box(32, 32, rng_b)
    expected = cv2.resize(src[top:top + h, left:left + w], (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_eval_resize_center_crop_geometry():
    # a 40 x 80 image whose columns count 0..79: shorter side to floor(32 / 0.875) = 36, width 72,
    # then the centre 32 x 32 (rows 2..33, columns 20..51 of the resized image)
    cols = np.tile(np.arange(80, dtype=np.uint8)[None, :, None], (40, 1, 3))
    out = resize_center_crop(cols, 32)
    resized = cv2.resize(cols, (72, 36), interpolation=cv2.INTER_AREA)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, resized[2:34, 20:52])
    square = image(224, seed=5)
    np.testing.assert_array_equal(resize_center_crop(square, 224),
                                  cv2.resize(square, (256, 256), interpolation=cv2.INTER_LINEAR)[16:240, 16:240])
    transform = EvalTransform(HALF, HALF, 32, center_crop=True)
    small = image(32, seed=6)  # CIFAR at its own size: up to 36, centre 32
    np.testing.assert_allclose(pixels(transform(small)),
                               cv2.resize(small, (36, 36), interpolation=cv2.INTER_LINEAR)[2:34, 2:34], atol=1e-3)
    assert transform(small).shape == (3, 32, 32)


def test_build_datasets_with_a_pipeline(cifar10_file):
    data = build_datasets("cifar10", data_file=str(cifar10_file), img_size=48,
                          pipeline=Pipeline("rrc_flip", "resize_center_crop"))
    assert isinstance(data.train.transform, RandomResizedCropFlip) and data.test.transform.center_crop
    assert data.test[0][0].shape == (3, 48, 48)
    seeded = SeededDataset(data.train, seed=0)
    assert seeded[(0, 1)][0].shape == (3, 48, 48)


# --- BiT's resolution rule ---------------------------------------------------------------

def test_bit_sizes_follow_the_96_pixel_threshold():
    assert bit_sizes(32, 32) == bit_sizes(95, 96) == bit_sizes(8, 8)
    assert (bit_sizes(32, 32).resize, bit_sizes(32, 32).crop) == (160, 128)
    assert (bit_sizes(96, 96).resize, bit_sizes(96, 96).crop) == (448, 384) == (bit_sizes(500, 375).resize, 384)
    assert stored_image_size("cifar100") == (32, 32) and stored_image_size("digits") == (8, 8)


def test_bit_resolution_sets_the_model_size_once_the_run_is_planned(cifar10_file, tmp_path):
    overrides = ["pretrain.dataset=cifar10", "pretrain.resolution=bit", "pretrain.augmentation=crop_flip",
                 "model.patch_size=16", "model.drop_border=false"]
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", overrides, stage="pretrain")
    assert cfg.model.img_size == 32  # the config as written; the rule applies to a run
    lines = []
    resolved = resolve_resolution(cfg, "pretrain", lines.append)
    assert resolved.model.img_size == 128 and cfg.model.img_size == 32 and resolved.pretrain.resolution == "bit"
    assert lines == ["pretrain.resolution bit: cifar10 images are 32x32, below 96x96: model.img_size 128 "
                     "(training: resize 160, random crop 128; evaluation: resize 128)"]
    pipeline = stage_pipeline(resolved, "pretrain")
    assert pipeline == Pipeline("crop_flip", "none", 160)
    train, evaluate = pipeline.transforms(128, HALF, HALF)
    assert (train.resize_to, train.padding, train.img_size, evaluate.img_size) == (160, 0, 128, 128)
    src = image(32, seed=7)
    out = pixels(train(src, rng=np.random.default_rng(0)))
    up = cv2.resize(src, (160, 160), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    u = np.random.default_rng(0).random(3)
    top, left = int(u[0] * 33), int(u[1] * 33)
    window = up[top:top + 128, left:left + 128]
    np.testing.assert_allclose(out, window[:, ::-1] if u[2] < 0.5 else window, atol=1e-3)
    fixed = load_config(CONFIG_DIR / "tutorial.yaml", ["pretrain.dataset=cifar10"], stage="pretrain")
    assert resolve_resolution(fixed, "pretrain") is fixed and stage_pipeline(fixed, "pretrain") == Pipeline()
    with pytest.raises(ConfigError, match=r"^pretrain.resolution bit sets model.img_size to 128: model.patch_size "
                                          r"\(12\) does not divide model.img_size \(128\)"):
        bad = load_config(None, ["pretrain.resolution=bit", "model.img_size=36", "model.patch_size=12"])
        resolve_resolution(bad, "pretrain", lambda line: None)


def test_bit_resolution_of_an_image_folder_uses_its_images_size(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2, size=120)
    assert stored_image_size("folder", root) == (120, 120)
    cfg = load_config(None, ["transfer.dataset=folder", f"transfer.data_dir={root}", "transfer.resolution=bit",
                             "model.patch_size=16"], stage="transfer")
    resolved = resolve_resolution(cfg, "transfer", lambda line: None)
    assert resolved.model.img_size == 384
    data = build_datasets("folder", data_dir=root, img_size=384, pipeline=stage_pipeline(resolved, "transfer"))
    assert data.train.images.shape[1:] == (448, 448, 3)  # decoded at the size the training crop comes from
    assert data.test[0][0].shape == (3, 384, 384)


# --- config keys -------------------------------------------------------------------------

def test_defaults_keep_todays_pipeline():
    st = load_config(CONFIG_DIR / "tutorial.yaml").transfer
    assert (st.augment, st.augmentation, st.eval_resize, st.resolution) == (True, "tutorial", "none", "fixed")
    assert (st.mixup_alpha, st.cutmix_alpha, st.mix_prob) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("override,message", [
    ("pretrain.augmentation=autoaugment", "pretrain.augmentation must be one of tutorial, crop_flip, rrc_flip, none, "
                                          "got 'autoaugment' (-o pretrain.augmentation=tutorial)"),
    ("pretrain.eval_resize=crop", "pretrain.eval_resize must be one of none, resize_center_crop, got 'crop' "
                                  "(-o pretrain.eval_resize=none)"),
    ("pretrain.resolution=auto", "pretrain.resolution must be one of fixed, bit, got 'auto' "
                                 "(-o pretrain.resolution=fixed)"),
])
def test_bad_pipeline_choices_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(CONFIG_DIR / "tutorial.yaml", [override])
    assert str(excinfo.value) == message


def test_augment_false_with_a_pipeline_is_a_conflict():
    with pytest.raises(ConfigError) as excinfo:
        load_config(CONFIG_DIR / "digits.yaml", ["pretrain.augmentation=rrc_flip"])
    assert str(excinfo.value) == ("pretrain.augment is false (no augmentation) but pretrain.augmentation is "
                                  "'rrc_flip': drop augment: false, or set pretrain.augmentation: none")
    cfg = load_config(CONFIG_DIR / "digits.yaml", ["pretrain.augmentation=rrc_flip", "pretrain.augment=true"])
    assert stage_pipeline(cfg, "pretrain").augmentation == "rrc_flip"


# --- end to end --------------------------------------------------------------------------

def test_a_bit_run_records_its_size_and_predict_evaluates_as_it_did(cifar10_file, tmp_path):
    import json

    from ppadapt.apps.predict import Predictor
    from ppadapt.training.engine import run_stage

    cfg = load_config(CONFIG_DIR / "tutorial.yaml",
                      ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.patch_size=16",
                       "model.drop_border=false", "model.carry.adaptformer.bottleneck=8", "pretrain.dataset=cifar10",
                       f"pretrain.data_file={cifar10_file}", "pretrain.epochs=1", "pretrain.batch_size=10",
                       "pretrain.resolution=bit", "pretrain.augmentation=crop_flip",
                       "pretrain.eval_resize=resize_center_crop", f"output={tmp_path}"], stage="pretrain")
    lines = []
    result = run_stage(cfg, "pretrain", verbose=0, log=lines.append)
    assert any(line.startswith("pretrain.resolution bit: cifar10 images are 32x32") for line in lines)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["config"]["model"]["img_size"] == 128 and record["config"]["pretrain"]["resolution"] == "bit"
    predictor = Predictor(result.run_dir, topk=1)
    assert predictor.img_size == 128 and predictor._transform.center_crop
    test = build_datasets("cifar10", data_file=str(cifar10_file), augment=False).test
    top1 = np.array([predictor.class_names.index(r["labels"][0]) for r in predictor(list(test.images))])
    assert np.mean(top1 == test.labels) == pytest.approx(record["best"]["acc_top1"], abs=1e-6)


def test_transfer_dry_run_counts_at_the_size_the_rule_gives(capsys):
    from ppadapt.apps.cli import transfer_main

    counts = []
    for extra in ([], ["-o", "transfer.resolution=bit"]):
        assert transfer_main(["--config", str(CONFIG_DIR / "digits.yaml"), "--dry-run", *extra]) == 0
        total = capsys.readouterr().out.split(" of ")[1].split(" ")[0]
        counts.append(int(total.replace(",", "")))
    assert counts[1] - counts[0] == (32 * 32 - 4 * 4) * 64  # 128 px in 4 px patches instead of 16 px, width 64
