"""PaddleClas pretrained backbones: loading, resampling, normalisation, download (issue 5)."""
import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from PIL import Image
from paddleclas.ppcls.arch.backbone.model_zoo import vision_transformer as clas_vt

from cifar_archive import write_cifar_archive
from ppadapt.runs import pretrained
from ppadapt.apps.cli import use_backbone, transfer_main
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.data import build_datasets
from ppadapt.runs.pretrained import load_pretrained
from ppadapt.errors import CheckpointError
from ppadapt.methods import AdaptFormerConfig, apply_adaptformer
from ppadapt.models import VisionTransformer, ViTConfig
from ppadapt.models.paddleclas_archs import PADDLECLAS_URLS, PADDLECLAS_VITS, paddleclas_vit_config
from ppadapt.runs.pretrained import (adapt_state_dict, paddleclas_weights, pretrained_normalization, resample_patch_embed,
                                resample_pos_embed, resize_matrix)

REPO = Path(__file__).resolve().parent.parent
TINY = dict(embed_dim=32, depth=2, num_heads=2, qkv_bias=True, epsilon=1e-6)  # PaddleClas's ViT-B settings, shrunk


def clas_checkpoint(path, img_size=32, patch_size=8, class_num=10, seed=0, **kw):
    """A random-init PaddleClas ViT saved as .pdparams; returns (model, path)."""
    paddle.seed(seed)
    model = clas_vt.VisionTransformer(img_size=img_size, patch_size=patch_size, class_num=class_num, **{**TINY, **kw})
    paddle.save(model.state_dict(), str(path))
    return model, path


def ours(img_size=32, patch_size=8, class_num=10, **kw):
    return VisionTransformer(ViTConfig(img_size=img_size, patch_size=patch_size, **{**TINY, **kw}), class_num=class_num)


def copy_head(model, path):
    state = paddle.load(str(path))
    model.head.weight.set_value(state["head.weight"])
    model.head.bias.set_value(state["head.bias"])


# --- the architectures and where their weights are -------------------------------------

@pytest.mark.parametrize("name", list(PADDLECLAS_VITS))
def test_backbone_keys_and_shapes_match_paddleclas_constructor(name):
    with paddle.LazyGuard():  # no memory for the weights: ViT-L would be 300M floats
        theirs = getattr(clas_vt, name)(class_num=1000).state_dict()
        mine = VisionTransformer(paddleclas_vit_config(name), class_num=1000).state_dict()
    assert {k: list(v.shape) for k, v in mine.items()} == {k: list(v.shape) for k, v in theirs.items()}


def test_weight_urls_are_paddleclas_own():
    assert PADDLECLAS_URLS == {name: clas_vt.MODEL_URLS[name] for name in PADDLECLAS_VITS}


# --- loading a PaddleClas checkpoint ------------------------------------------------------

def test_paddleclas_checkpoint_loads_with_identical_logits(tmp_path):
    clas, path = clas_checkpoint(tmp_path / "clas.pdparams")
    model = ours()
    kept = load_pretrained(model, path, log=lambda s: pytest.fail(f"nothing to resample, got: {s}"))
    assert sorted(kept) == ["head.bias", "head.weight"]  # the head is always new; nothing else missing
    copy_head(model, path)
    clas.eval(), model.eval()
    x = paddle.randn([3, 3, 32, 32])
    assert (clas(x) - model(x)).abs().max().item() < 1e-5

    adapted = ours()
    apply_adaptformer(adapted, AdaptFormerConfig(bottleneck=4))
    kept = load_pretrained(adapted, path)
    assert all(".adaptmlp." in k or k.startswith("head.") for k in kept)


def test_mismatched_checkpoint_is_one_line_error_listing_keys(tmp_path):
    _, path = clas_checkpoint(tmp_path / "clas.pdparams")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(ours(embed_dim=48, num_heads=2), path)
    msg = str(err.value)
    assert "\n" not in msg and "shape mismatches" in msg and "pos_embed" in msg and "embed_dim" in msg
    with pytest.raises(CheckpointError, match=r"missing keys \(blocks\.2\."):
        load_pretrained(ours(depth=3), path)


# --- resampling ----------------------------------------------------------------------------

@pytest.mark.parametrize("old,new", [(4, 8), (14, 24), (3, 7), (5, 5)])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_resize_matrix_enlarges_like_paddle_interpolate(old, new, mode):
    x = np.random.default_rng(0).standard_normal((1, 2, old, old)).astype("float32")
    ref = F.interpolate(paddle.to_tensor(x), size=[new, new], mode=mode, align_corners=False).numpy()
    a = resize_matrix(old, new, mode)
    np.testing.assert_allclose(np.einsum("ij,bcjk,lk->bcil", a, x, a), ref, atol=1e-5)


@pytest.mark.parametrize("new", [4, 10])
@pytest.mark.parametrize("mode,pil", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)])
def test_resize_matrix_shrinks_antialiased_like_pil(new, mode, pil):
    x = np.random.default_rng(1).random((16, 16)).astype("float32")
    ref = np.asarray(Image.fromarray(x, mode="F").resize((new, new), pil))
    a = resize_matrix(16, new, mode)
    np.testing.assert_allclose(a @ x @ a.T, ref, atol=1e-5)


def test_pos_embed_same_grid_is_bit_identical(tmp_path):
    _, path = clas_checkpoint(tmp_path / "clas.pdparams")
    state = paddle.load(str(path))
    out, notes = adapt_state_dict(state, ours())
    assert notes == [] and set(out) == set(state)
    assert all(np.array_equal(np.asarray(out[k]), np.asarray(state[k])) for k in state)
    pos = state["pos_embed"].numpy()
    assert resample_pos_embed(pos, 4) is pos


def test_pos_embed_resampled_4x4_to_8x8_keeps_class_token_and_is_smooth():
    yy, xx = np.mgrid[0:4, 0:4] / 3.0
    grid = np.stack([np.sin(yy + 2 * xx), np.cos(2 * yy - xx), yy * xx], axis=-1).reshape(1, 16, 3)
    cls = np.array([[[7.0, -3.0, 0.25]]])
    pos = np.concatenate([cls, grid], axis=1).astype("float32")

    up = resample_pos_embed(pos, 8)
    assert up.shape == (1, 65, 3) and up.dtype == np.float32
    assert np.array_equal(up[:, :1], cls.astype("float32"))
    ref = F.interpolate(paddle.to_tensor(grid.reshape(1, 4, 4, 3).transpose(0, 3, 1, 2).astype("float32")),
                        size=[8, 8], mode="bicubic", align_corners=False).numpy()
    np.testing.assert_allclose(up[0, 1:].reshape(8, 8, 3).transpose(2, 0, 1), ref[0], atol=1e-5)
    step = np.abs(np.diff(up[0, 1:].reshape(8, 8, 3), axis=0)).max()
    assert step < np.abs(np.diff(grid.reshape(4, 4, 3), axis=0)).max()  # finer grid, smaller steps
    back = resample_pos_embed(up, 4)
    assert np.array_equal(back[:, :1], pos[:, :1])
    assert np.abs(back - pos).max() < 0.1 * np.abs(pos[:, 1:]).max()


def test_patch_kernel_resampling_is_pseudo_inverse():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 4, 4))
    assert resample_patch_embed(w, 4) is w
    # Enlarging is exact: the resized patch through the new kernel = the old patch through the old one.
    a = resize_matrix(4, 8)
    x = rng.standard_normal((3, 4, 4))
    big = resample_patch_embed(w, 8)
    np.testing.assert_allclose(np.einsum("dcij,cij->d", big, np.einsum("ij,cjk,lk->cil", a, x, a)),
                               np.einsum("dcij,cij->d", w, x), atol=1e-9)
    # Shrinking is least squares: exact for a kernel the small one can express.
    s = resize_matrix(16, 4)
    small = rng.standard_normal((5, 3, 4, 4))
    w16 = np.einsum("dcij,ik,jl->dckl", small, s, s)  # = R^T small
    np.testing.assert_allclose(resample_patch_embed(w16, 4), small, atol=1e-9)


def test_checkpoint_loads_at_other_image_and_patch_size(tmp_path):
    clas, path = clas_checkpoint(tmp_path / "clas.pdparams", img_size=32, patch_size=8)  # 4x4 grid
    notes = []
    model = ours(img_size=64, patch_size=8)  # 8x8 grid: pos_embed resampled
    assert sorted(load_pretrained(model, path, notes.append)) == ["head.bias", "head.weight"]
    assert notes == ["resampled pos_embed from a 4x4 to a 8x8 patch grid (bicubic, class token kept)"]
    assert model.pos_embed.shape == [1, 65, 32]

    # Patch 8 -> 16 on a 2x larger image, same 4x4 grid: each 16x16 patch is the 8x8 one resized,
    # so the pseudo-inverse kernel makes the new model compute exactly the old one's logits.
    notes.clear()
    big = ours(img_size=64, patch_size=16)
    load_pretrained(big, path, notes.append)
    assert len(notes) == 1 and "patch 8 to 16" in notes[0]
    copy_head(big, path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32")
    a = resize_matrix(8, 16)
    blocks = x.reshape(2, 3, 4, 8, 4, 8)
    x64 = np.einsum("ij,bcujvk,lk->bcuivl", a, blocks, a).reshape(2, 3, 64, 64).astype("float32")
    clas.eval(), big.eval()
    diff = (clas(paddle.to_tensor(x)) - big(paddle.to_tensor(x64))).abs().max().item()
    assert diff < 1e-4

    small = ours(img_size=32, patch_size=4)  # 8x8 grid and a 4x4 kernel: both resampled
    notes.clear()
    assert sorted(load_pretrained(small, path, notes.append)) == ["head.bias", "head.weight"]
    assert len(notes) == 2 and small.patch_embed.proj.weight.shape == [32, 3, 4, 4]


def test_floored_grid_when_image_is_not_a_multiple_of_the_patch(tmp_path):
    _, path = clas_checkpoint(tmp_path / "clas.pdparams", img_size=32, patch_size=8)
    model = ours(img_size=36, patch_size=8)  # 36 // 8 = 4: same grid, border pixels dropped
    notes = []
    load_pretrained(model, path, notes.append)
    assert notes == []
    model = ours(img_size=50, patch_size=8)  # 6x6
    load_pretrained(model, path, notes.append)
    assert notes and "to a 6x6 patch grid" in notes[0]


# --- normalisation --------------------------------------------------------------------------

def test_normalisation_follows_the_weights(tmp_path):
    half = ((0.5,) * 3, (0.5,) * 3)
    assert pretrained_normalization(None, None) is None
    assert pretrained_normalization("paddleclas:ViT_base_patch16_224", tmp_path / "x.pdparams")[:2] == half
    external = tmp_path / "ext" / "clas.pdparams"
    assert pretrained_normalization(str(external), external)[:2] == half
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}))
    assert pretrained_normalization(None, run / "final.pdparams")[:2] == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))

    archive = write_cifar_archive(tmp_path / "c10.tar.gz", train_per_class=1, test_per_class=1)
    data = build_datasets("cifar10", data_file=str(archive), augment=False, normalization=half)
    assert (data.mean, data.std) == half
    image, _ = data.test[0]
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.min() < -0.5  # (x - 0.5) / 0.5 of [0, 1]


# --- the CLI: --backbone, overrides, download -------------------------------------------------

def test_backbone_then_overrides_then_paddleclas_weights():
    overrides = ["model.img_size=32", "model.patch_size=4", "lr=0.1"]
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", overrides, stage="transfer")
    use_backbone(cfg, "ViT_base_patch16_224", overrides)
    m = cfg.model
    assert (m.img_size, m.patch_size, m.embed_dim, m.depth, m.qkv_bias, m.epsilon) == (32, 4, 768, 12, True, 1e-6)
    assert cfg.transfer.pretrained == "paddleclas:ViT_base_patch16_224" and not cfg.model.carry
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", [], stage="transfer")
    cfg.transfer.pretrained = "mine.pdparams"
    use_backbone(cfg, "ViT_large_patch32_384")
    assert cfg.transfer.pretrained == "mine.pdparams" and cfg.model.embed_dim == 1024 and cfg.model.img_size == 384


@pytest.fixture
def weight_caches(tmp_path, monkeypatch):
    clas_home, paddle_home = tmp_path / "paddleclas_weights", tmp_path / "paddle_weights"
    monkeypatch.setattr(pretrained, "WEIGHTS_HOME", clas_home)
    monkeypatch.setattr(pretrained, "PADDLE_WEIGHTS_HOME", paddle_home)
    return clas_home, paddle_home


def test_offline_download_is_one_line_error_exit_2(weight_caches, monkeypatch, capsys, tmp_path):
    calls = []

    def offline(url, dest):
        calls.append(url)
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))
    monkeypatch.setattr(pretrained, "_fetch", offline)
    assert transfer_main(["--backbone", "ViT_base_patch16_224", "--method", "adaptformer",
                          "--output", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and len(calls) == 1  # one attempt, one line
    assert err[0].startswith("error: download of PaddleClas's ViT_base_patch16_224 weights failed (")
    assert "Name or service not known" in err[0] and "pass --pretrained PATH" in err[0]
    assert not weight_caches[0].exists()  # nothing left in the cache


def test_cached_weights_are_used_and_download_is_atomic(weight_caches, monkeypatch, tmp_path):
    clas_home, paddle_home = weight_caches
    name, filename = "ViT_base_patch16_224", "ViT_base_patch16_224_pretrained.pdparams"
    paddle_home.mkdir()
    (paddle_home / filename).write_bytes(b"weights")
    monkeypatch.setattr(pretrained, "_fetch", lambda url, dest: pytest.fail("downloaded a cached file"))
    assert paddleclas_weights(name) == paddle_home / filename  # Paddle's cache counts too

    (paddle_home / filename).unlink()
    source = tmp_path / "server" / filename
    source.parent.mkdir()
    source.write_bytes(b"x" * 3_000_000)
    monkeypatch.undo()
    monkeypatch.setattr(pretrained, "WEIGHTS_HOME", clas_home)
    monkeypatch.setattr(pretrained, "PADDLE_WEIGHTS_HOME", paddle_home)
    monkeypatch.setitem(PADDLECLAS_URLS, name, source.as_uri())
    logged = []
    path = paddleclas_weights(name, logged.append)
    assert path == clas_home / filename and path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in clas_home.iterdir()) == [filename]  # no temporary file left
    assert logged and "downloading PaddleClas's" in logged[0]


def test_transfer_cli_loads_a_paddleclas_checkpoint(tmp_path):
    """transfer.py on a tiny PaddleClas-format checkpoint (patch 8 -> 4, grid 4 -> 8), 1 epoch."""
    _, ckpt = clas_checkpoint(tmp_path / "tiny_paddleclas.pdparams", img_size=32, patch_size=8)
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {img_size: 32, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2, "
                      "qkv_bias: true, epsilon: 1.0e-6}\n"
                      "adapter: {enabled: false, bottleneck: 8}\n"
                      "transfer: {dataset: cifar10, classes: [0, 1, 2], batch_size: 16, warmup_steps: 2}\n")
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", train_per_class=6, test_per_class=2)
    proc = subprocess.run([sys.executable, str(REPO / "ppadapt" / "transfer.py"), "--config", str(config),
                           "--pretrained", str(ckpt), "--method", "adaptformer", "--epochs", "1", "--quiet",
                           "--data-file", str(archive), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "resampled pos_embed from a 4x4 to a 8x8 patch grid" in out
    assert "resampled patch_embed.proj.weight from patch 8 to 4" in out
    assert f"loaded pretrained weights from {ckpt} (" in out
    assert "(2 new tensors left at init)" in out  # the head; AdaptFormer comes after loading
    assert "normalisation: mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)" in out
    record = json.loads((tmp_path / "out" / "tiny_transfer_cifar10_frozen" / "run.json").read_text())
    assert record["mean"] == [0.5] * 3 and record["std"] == [0.5] * 3
    assert record["config"]["transfer"]["pretrained"] == str(ckpt)
