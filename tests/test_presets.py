"""The recipe presets (configs/adaptformer_paper.yaml, vpetl.yaml, bit_hyperrule.yaml): each
loads, counts exactly at a tiny size (and adaptformer_paper at its full size) and trains one
real step on the CPU with a finite loss."""
import math

import paddle
import pytest

from cifar_archive import write_cifar_archive
from ppadapt.apps.cli import transfer_main
from ppadapt.config import CONFIG_DIR, load_config

TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2"]
# preset: (its --backbone, its dataset, the tiny dry run's count line)
PRESETS = {
    "adaptformer_paper": ("MAE_vit_base_patch16", "cifar100",
                          "trainable parameters: 11,684 of 43,908 (26.61%), 0.04 MiB; 8,384 without the head"),
    # BiT's rule trains CIFAR at 128 px: the tiny model's position embedding is 16x16 + 1 tokens
    "bit_hyperrule": ("ViT_base_patch16_224", "cifar100",
                      "trainable parameters: 43,204 of 43,204 (100.00%), 0.16 MiB; 39,904 without the head"),
    "vpetl": ("ViT_base_patch16_224", "cifar100",
              "trainable parameters: 11,684 of 43,908 (26.61%), 0.04 MiB; 8,384 without the head"),
}


class Losses(paddle.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, step, logs=None) -> None:
        loss = logs["loss"]
        self.losses.append(float(loss[0] if isinstance(loss, (list, tuple)) else loss))


def argv(name: str, *extra: str, tiny: bool = True) -> list[str]:
    backbone = PRESETS[name][0]
    args = ["--config", str(CONFIG_DIR / f"{name}.yaml"), "--backbone", backbone, "--pretrained", "none", *extra]
    for item in TINY if tiny else ():
        args += ["-o", item]
    return args


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_preset_loads_and_counts(name, capsys):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml", stage="transfer")
    assert cfg.name == name and cfg.transfer.dataset == PRESETS[name][1]
    assert cfg.model.backbone == PRESETS[name][0] and cfg.model.carry == {}
    assert transfer_main(argv(name, "--dry-run")) == 0
    assert PRESETS[name][2] in capsys.readouterr().out


def test_adaptformer_paper_at_full_size(capsys):
    """MAE ViT-B/16 at 224, AdaptFormer-64, bn_linear head for CIFAR-100's 100 classes
    (the README's 1,189,632 without the head); no weights are read."""
    assert transfer_main(argv("adaptformer_paper", "--dry-run", tiny=False)) == 0
    out = capsys.readouterr().out
    assert "trainable parameters: 1,266,532 of 87,065,188 (1.45%), 4.83 MiB; 1,189,632 without the head" in out
    # the config alone (no --backbone) describes the same network
    assert transfer_main(["--config", str(CONFIG_DIR / "adaptformer_paper.yaml"), "--pretrained", "none",
                          "--dry-run"]) == 0
    assert "trainable parameters: 1,266,532 of 87,065,188" in capsys.readouterr().out


def test_vpetl_recipe():
    cfg = load_config(CONFIG_DIR / "vpetl.yaml", stage="transfer")
    t = cfg.transfer
    assert cfg.model.drop_path_rate == 0.1
    assert (t.optimizer, t.lr, t.weight_decay, t.label_smoothing, t.epochs, t.warmup_epochs, t.batch_size) == \
        ("adamw", 1e-3, 1e-4, 0.1, 100, 10, 64)


def test_bit_hyperrule_recipe(capsys):
    cfg = load_config(CONFIG_DIR / "bit_hyperrule.yaml", stage="transfer")
    t = cfg.transfer
    assert (cfg.method.name, cfg.model.head_init, t.optimizer, t.momentum, t.weight_decay) == \
        ("full", "zero", "momentum", 0.9, 0.0)
    assert t.lr * t.batch_size / 256 == pytest.approx(0.003)  # BiT's 0.003 at batch 512, by lr_scale
    assert (t.lr_scale, t.schedule, t.decay_at, t.decay_factor, t.warmup_steps) == \
        ("linear256", "step_decay", [0.3, 0.6, 0.9], 0.1, 500)
    assert (t.resolution, t.augmentation, t.mixup_alpha) == ("bit", "crop_flip", 0.1)
    assert t.epochs == 102  # 10k steps of 512 on CIFAR's 50,000 images
    # full size: ViT-B/16 at BiT's 128 px for CIFAR (an 8x8 grid), fully trainable
    assert transfer_main(argv("bit_hyperrule", "--dry-run", tiny=False)) == 0
    assert "trainable parameters: 85,774,180 of 85,774,180 (100.00%)" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_one_real_training_step(name, tmp_path):
    dataset = PRESETS[name][1]
    archive = write_cifar_archive(tmp_path / f"{dataset}-python.tar.gz", dataset, train_per_class=4,
                                  test_per_class=1)
    losses = Losses()
    extra = ["--data-file", str(archive), "--output", str(tmp_path / "out"), "--quiet", "-o", "transfer.epochs=1",
             "-o", "transfer.classes=[0, 1]", "-o", "transfer.batch_size=8"]
    assert transfer_main(argv(name, *extra), callbacks=[losses]) == 0
    assert len(losses.losses) == 1 and math.isfinite(losses.losses[0])  # 8 images, one batch of 8
