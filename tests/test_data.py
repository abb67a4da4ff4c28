"""The data layer through its real loading code: archives, folders, digits, transforms."""
from __future__ import annotations

import gzip
import tarfile

import cv2
import numpy as np
import paddle
import pytest
from PIL import Image

from cifar_archive import CIFAR10_NAMES, CIFAR100_NAMES, write_cifar_archive, write_image_folder
from conftest import shared_cifar10_or_skip
from ppadapt.data import DATASETS, DatasetBundle, EvalTransform, TrainTransform, build_datasets
from ppadapt.errors import DataError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def cifar10_file(tmp_path_factory):
    return write_cifar_archive(tmp_path_factory.mktemp("c10") / "cifar-10-python.tar.gz")


@pytest.fixture(scope="module")
def cifar100_file(tmp_path_factory):
    return write_cifar_archive(tmp_path_factory.mktemp("c100") / "cifar-100-python.tar.gz", "cifar100",
                               train_per_class=3, test_per_class=1)


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything tries Paddle's downloader."""
    from paddle.dataset import common

    def refuse(*args, **kwargs):
        pytest.fail(f"download attempted: {args}")

    monkeypatch.setattr(common, "download", refuse)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- CIFAR -----------------------------------------------------------------

def test_cifar10_items_shapes_dtypes_and_normalisation(cifar10_file, no_download):
    data = build_datasets("cifar10", data_file=str(cifar10_file), augment=False)
    assert isinstance(data, DatasetBundle) and "cifar10" in DATASETS
    assert (len(data.train), len(data.test), data.num_classes) == (100, 40, 10)
    assert data.class_names == list(CIFAR10_NAMES)
    assert (data.mean, data.std) == (CIFAR10_MEAN, CIFAR10_STD)
    image, label = data.test[0]
    assert image.shape == (3, 32, 32) and image.dtype == np.float32 and image.flags.c_contiguous
    assert label.shape == (1,) and label.dtype == np.int64
    raw = data.test.images[0]  # uint8 HWC as read from the archive
    expected = (raw.astype(np.float32) / 255 - np.float32(CIFAR10_MEAN)) / np.float32(CIFAR10_STD)
    np.testing.assert_allclose(image, expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    assert np.bincount(data.train.labels, minlength=10).tolist() == [10] * 10


def test_archive_matches_paddles_own_reader(cifar10_file):
    """The helper's archive is the official layout: Paddle's Cifar10 reads the same pixels."""
    ours = build_datasets("cifar10", data_file=str(cifar10_file), augment=False).test
    theirs = paddle.vision.datasets.Cifar10(data_file=str(cifar10_file), mode="test", download=False,
                                            backend="cv2")
    assert len(theirs) == len(ours)
    image, label = theirs[3]
    np.testing.assert_array_equal(np.asarray(image), ours.images[3])
    assert int(label) == int(ours.labels[3])


def test_batches_collate_to_model_inputs(cifar10_file):
    data = build_datasets("cifar10", data_file=str(cifar10_file))
    images, labels = next(iter(paddle.io.DataLoader(data.train, batch_size=8, shuffle=True)))
    assert images.shape == [8, 3, 32, 32] and images.dtype == paddle.float32
    assert labels.shape == [8, 1] and labels.dtype == paddle.int64


def test_class_subset_relabels_in_given_order(cifar10_file):
    data = build_datasets("cifar10", data_file=str(cifar10_file), classes=[9, 5, 6])
    full = build_datasets("cifar10", data_file=str(cifar10_file), augment=False)
    assert data.class_names == ["truck", "dog", "frog"] and data.num_classes == 3
    assert (len(data.train), len(data.test)) == (30, 12)
    original = {9: 0, 5: 1, 6: 2}
    first_truck = int(np.flatnonzero(full.train.labels == 9)[0])
    assert data.train.labels[np.flatnonzero((data.train.images == full.train.images[first_truck])
                                            .all(axis=(1, 2, 3)))[0]] == original[9]
    assert set(data.test.labels.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("classes", [[3, 10], [-1, 2], [2, 2], [4]])
def test_bad_class_subsets_are_data_errors(cifar10_file, classes):
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar10", data_file=str(cifar10_file), classes=classes)
    assert "class" in one_line_error(excinfo)


def test_a_class_subset_with_an_empty_split_is_a_data_error(tmp_path, no_download):
    """Classes with no test (or training) images fail at once, naming the split, the classes
    and the fix, instead of deep in Paddle's evaluation once training has run."""
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", train_per_class=3, test_per_class=1,
                                  train_classes=range(8), test_classes=range(5))
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar10", role="transfer", data_file=str(archive), classes=[5, 6])
    assert one_line_error(excinfo) == (
        f"the test split of {archive} has no images of the selected classes 5 (dog), 6 (frog): nothing to "
        "evaluate on (choose classes that have test images with -o transfer.classes=[...], or use data whose "
        "test split has these classes)")
    with pytest.raises(DataError, match=r"^the train split of .* 8 \(ship\), 9 \(truck\): nothing to train on "
                                        r"\(choose classes that have train images with -o pretrain.classes"):
        build_datasets("cifar10", data_file=str(archive), classes=[8, 9])  # no split has them: train is named first
    data = build_datasets("cifar10", data_file=str(archive), classes=[4, 5])  # one class in test is enough
    assert (len(data.train), len(data.test)) == (6, 1)


@pytest.mark.parametrize("size", [16, 224])
def test_images_stay_at_their_stored_size_and_are_resized_per_item(cifar10_file, size):
    """A 224 px model on CIFAR must not hold 49x the pixels in memory; the items are the
    ones resizing up front gave (bilinear up, area down)."""
    data = build_datasets("cifar10", data_file=str(cifar10_file), img_size=size, classes=[0, 1])
    stored = build_datasets("cifar10", data_file=str(cifar10_file), img_size=32, classes=[0, 1])
    assert data.train.images.shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(data.test.images, stored.test.images)
    for i in range(3):
        image, _ = data.test[i]
        assert image.shape == (3, size, size)
        interpolation = cv2.INTER_LINEAR if size > 32 else cv2.INTER_AREA
        resized = cv2.resize(stored.test.images[i], (size, size), interpolation=interpolation)
        np.testing.assert_array_equal(image, EvalTransform(CIFAR10_MEAN, CIFAR10_STD)(resized))
        assert data.train[i][0].shape == (3, size, size)  # augmented, at the model's size


def test_cifar100_layout(cifar100_file, no_download):
    data = build_datasets("cifar100", data_file=str(cifar100_file), img_size=32)
    assert data.num_classes == 100 and data.class_names == list(CIFAR100_NAMES)
    assert (len(data.train), len(data.test)) == (300, 100)
    assert (data.mean, data.std) == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    assert data.train[0][0].shape == (3, 32, 32)


def test_wrong_dataset_archive_names_both(cifar10_file, cifar100_file, no_download):
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar100", data_file=str(cifar10_file))
    message = one_line_error(excinfo)
    assert "is a CIFAR-10 archive" in message and "cifar-100-python.tar.gz" in message
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar10", data_file=str(cifar100_file))
    message = one_line_error(excinfo)
    assert "is a CIFAR-100 archive" in message and "cifar-10-python.tar.gz" in message


def test_truncated_archive_is_a_data_error(cifar10_file, tmp_path, no_download):
    blob = cifar10_file.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar10", data_file=str(cut))
    assert "truncated or corrupt" in one_line_error(excinfo)


@pytest.mark.parametrize("content", [b"", b"not a tarball at all", gzip.compress(b"plain text, not tar")])
def test_garbage_file_is_a_data_error(tmp_path, content, no_download):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar10", data_file=str(bad))
    message = one_line_error(excinfo)
    assert str(bad) in message and "--data-file" in message


def test_archive_missing_members_is_a_data_error(cifar10_file, tmp_path, no_download):
    partial = tmp_path / "partial.tar.gz"
    with tarfile.open(cifar10_file) as src, tarfile.open(partial, "w:gz") as dst:
        for info in src:
            if not info.name.endswith("data_batch_3"):
                dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar10", data_file=str(partial))
    assert "cifar-10-batches-py/data_batch_3" in one_line_error(excinfo)


def test_foreign_tar_is_a_data_error(tmp_path, no_download):
    other = tmp_path / "other.tar.gz"
    write_image_folder(tmp_path / "imgs", per_class=1, size=8)
    with tarfile.open(other, "w:gz") as tar:
        tar.add(tmp_path / "imgs", arcname="imgs")
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar10", data_file=str(other))
    assert "not a CIFAR-10 archive" in one_line_error(excinfo)


def test_missing_file_is_a_data_error_without_download(tmp_path, no_download):
    missing = tmp_path / "nowhere" / "cifar-10-python.tar.gz"
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar10", data_file=str(missing))
    message = one_line_error(excinfo)
    assert message == f"data file not found: {missing} (pass --data-file with the path to cifar-10-python.tar.gz)"


def test_without_data_file_paddles_downloader_is_used(monkeypatch, cifar100_file):
    from paddle.dataset import common

    calls = []

    def fake_download(url, module_name, md5sum, save_name=None):
        calls.append((url, module_name, md5sum))
        return str(cifar100_file)

    monkeypatch.setattr(common, "download", fake_download)
    assert build_datasets("cifar100", classes=[0, 1]).class_names == ["apple", "aquarium_fish"]
    assert calls == [("https://dataset.bj.bcebos.com/cifar/cifar-100-python.tar.gz", "cifar",
                      "eb9058c3a382ffc7106e4002c42a8d85")]


def test_failed_download_says_to_pass_data_file(monkeypatch):
    from paddle.dataset import common

    def offline(*args, **kwargs):
        raise RuntimeError("Cannot download https://x within retry limit 3\n(offline)")

    monkeypatch.setattr(common, "download", offline)
    with pytest.raises(DataError) as excinfo:
        build_datasets("cifar10")
    message = one_line_error(excinfo)
    assert "download" in message and "--data-file" in message and "cifar-10-python.tar.gz" in message


def test_unknown_dataset_is_a_data_error():
    with pytest.raises(DataError) as excinfo:
        build_datasets("imagenet")
    assert "cifar10" in one_line_error(excinfo)


def test_real_cifar10_subset_loads(no_download):
    path = shared_cifar10_or_skip()
    data = build_datasets("cifar10", data_file=str(path))
    assert (len(data.train), len(data.test), data.num_classes) == (5000, 1000, 10)
    assert data.class_names == list(CIFAR10_NAMES)
    assert np.bincount(data.test.labels).tolist() == [100] * 10


# --- image folder ------------------------------------------------------------

def test_image_folder_with_grayscale_and_rgba(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=3, size=40)
    Image.fromarray(np.full((20, 30), 200, np.uint8), mode="L").save(root / "train" / "cat" / "grey.PNG")
    Image.fromarray(np.full((12, 12, 4), 90, np.uint8), mode="RGBA").save(root / "test" / "dog" / "rgba.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    data = build_datasets("folder", data_dir=str(root), img_size=24, augment=False)
    assert data.class_names == ["cat", "dog"] and (data.mean, data.std) == ((0.5,) * 3, (0.5,) * 3)
    assert (len(data.train), len(data.test)) == (7, 7)
    assert data.train.images.shape == (7, 24, 24, 3) and data.train.images.dtype == np.uint8
    grey_index = [i for i in range(len(data.train)) if (data.train.images[i] == 200).all()]
    assert len(grey_index) == 1 and data.train.labels[grey_index[0]] == 0
    image, label = data.train[grey_index[0]]
    np.testing.assert_allclose(image, (200 / 255 - 0.5) / 0.5, rtol=1e-5)
    assert label.tolist() == [0]


def test_unreadable_image_is_skipped_with_warning(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=2, size=16)
    (root / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file"):
        data = build_datasets("folder", data_dir=str(root), img_size=16)
    assert len(data.train) == 6 and data.num_classes == 3


def test_folder_errors(tmp_path):
    def error(data_dir) -> str:
        with pytest.raises(DataError) as excinfo:
            build_datasets("folder", data_dir=None if data_dir is None else str(data_dir))
        return one_line_error(excinfo)

    assert "--data-dir" in error(None)
    assert "not found" in error(tmp_path / "absent")
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    assert "no 'test' subfolder" in error(tmp_path / "only_train")

    empty = tmp_path / "empty"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (empty / split / name).mkdir(parents=True)
    assert "no images" in error(empty)

    one = write_image_folder(tmp_path / "one", classes=("only",), per_class=2, size=8)
    assert "at least 2" in error(one)

    mismatch = write_image_folder(tmp_path / "mismatch", classes=("a", "b"), per_class=1, size=8)
    (mismatch / "test" / "b").rename(mismatch / "test" / "c")
    message = error(mismatch)
    assert "same class folders" in message and "'b'" in message and "'c'" in message


# --- digits --------------------------------------------------------------------

def test_digits_roles_are_disjoint_and_split_is_fixed():
    np.random.seed(123)
    pre = build_datasets("digits", role="pretrain", img_size=16)
    np.random.seed(456)
    again = build_datasets("digits", role="pretrain", img_size=16)
    post = build_datasets("digits", role="transfer", img_size=16)
    assert pre.class_names == ["0", "1", "2", "3", "4"] and post.class_names == ["5", "6", "7", "8", "9"]
    np.testing.assert_array_equal(pre.train.images, again.train.images)
    np.testing.assert_array_equal(pre.test.labels, again.test.labels)
    for data in (pre, post):
        assert data.train.images.shape[1:] == (8, 8, 3)  # the 8x8 scans, resized per item
        assert data.train[0][0].shape == data.test[0][0].shape == (3, 16, 16)
        total = len(data.train) + len(data.test)
        assert 0.18 < len(data.test) / total < 0.22
        counts = np.bincount(data.test.labels, minlength=5)
        assert counts.min() >= 30  # stratified: every digit in the test split
        assert set(data.train.labels.tolist()) == set(range(5))
    pre_pixels = {img.tobytes() for img in pre.train.images}
    assert not any(img.tobytes() in pre_pixels for img in post.train.images)
    assert not isinstance(pre.train.transform, EvalTransform) and pre.train.transform.flip is False


def test_digits_class_subset_indexes_the_roles_classes():
    data = build_datasets("digits", role="transfer", classes=[4, 0], img_size=8)
    assert data.class_names == ["9", "5"]


# --- transforms ------------------------------------------------------------------

def test_train_transform_is_random_but_reproducible_and_eval_is_deterministic():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    train = TrainTransform(32, CIFAR10_MEAN, CIFAR10_STD)
    evaluate = EvalTransform(CIFAR10_MEAN, CIFAR10_STD)
    np.random.seed(7)
    first = [train(image) for _ in range(4)]
    np.random.seed(7)
    second = [train(image) for _ in range(4)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])
    assert all(out.shape == (3, 32, 32) and out.dtype == np.float32 for out in first)
    np.testing.assert_array_equal(evaluate(image), evaluate(image))
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)  # input untouched

    private = TrainTransform(32, CIFAR10_MEAN, CIFAR10_STD, rng=np.random.default_rng(1))
    state = np.random.get_state()[1].copy()
    private(image)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG not consumed


def test_train_transform_without_flip_never_mirrors():
    """A left-right ramp stays increasing to the right (apart from rotation corners)."""
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.float32)[None, :, None], (32, 1, 3)).astype(np.uint8)
    no_flip = TrainTransform(32, (0.5,) * 3, (0.5,) * 3, flip=False, rng=np.random.default_rng(0))
    flip = TrainTransform(32, (0.5,) * 3, (0.5,) * 3, flip=True, rng=np.random.default_rng(0))
    row = slice(12, 20)

    def slope(out):
        return np.polyfit(np.arange(8, 24), out[0, row, 8:24].mean(axis=0), 1)[0]

    assert all(slope(no_flip(ramp)) > 0 for _ in range(20))
    assert any(slope(flip(ramp)) < 0 for _ in range(20))
