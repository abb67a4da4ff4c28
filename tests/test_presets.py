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
    assert (t.lr_scale, t.schedule, t.decay_factor) == ("linear256", "bit_hyperrule", 0.1)
    assert (t.resolution, t.augmentation) == ("bit", "crop_flip")
    # full size: ViT-B/16 at BiT's 128 px for CIFAR (an 8x8 grid), fully trainable; the dry run
    # says that the rule decides the schedule once the training set is loaded
    assert transfer_main(argv("bit_hyperrule", "--dry-run", tiny=False)) == 0
    out, err = capsys.readouterr()
    assert "trainable parameters: 85,774,180 of 85,774,180 (100.00%)" in out and "schedule" not in out
    assert ("note: transfer.schedule bit_hyperrule: epochs, warm-up, LR decay steps and MixUp are decided from the "
            "number of training images when the run has loaded them") in err


def test_bit_hyperrule_decides_the_schedule_from_the_loaded_training_set(tmp_path):
    """The preset on a CIFAR-100 look-alike: 2 classes of 4 images, batch 8, is BiT's smallest
    schedule, one batch an epoch; nothing is trained."""
    from ppadapt.training.data_loading import load_datasets
    from ppadapt.training.plan import plan_stage, settle_schedule

    archive = write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", "cifar100", train_per_class=4,
                                  test_per_class=1)
    cfg = load_config(CONFIG_DIR / "bit_hyperrule.yaml",
                      [*TINY, "transfer.pretrained=none", f"transfer.data_file={archive}", "transfer.classes=[0, 1]",
                       "transfer.batch_size=8", f"output={tmp_path / 'out'}"], stage="transfer")
    lines = []
    plan = plan_stage(cfg, "transfer", log=lines.append)
    plan = settle_schedule(plan, len(load_datasets(plan, lines.append).train), 1, lines.append)
    t = plan.cfg.transfer
    assert (t.schedule, t.epochs, t.warmup_steps, t.decay_at, t.mixup_alpha) == \
        ("step_decay", 500, 100, [0.4, 0.6, 0.8], 0.0)
    assert lines[-1] == ("transfer.schedule bit_hyperrule: 8 training images (< 20k): 500 steps = 500 epochs of 1 "
                         "batch, warm-up 100, LR x0.1 at steps 200, 300, 400; MixUp off")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_one_real_training_step(name, tmp_path):
    dataset = PRESETS[name][1]
    archive = write_cifar_archive(tmp_path / f"{dataset}-python.tar.gz", dataset, train_per_class=4,
                                  test_per_class=1)
    losses = Losses()
    extra = ["--data-file", str(archive), "--output", str(tmp_path / "out"), "--quiet", "-o", "transfer.epochs=1",
             "-o", "transfer.classes=[0, 1]", "-o", "transfer.batch_size=8"]
    if name == "bit_hyperrule":  # the rule would train its 500 steps: one epoch of step decay instead
        extra += ["-o", "transfer.schedule=step_decay"]
    assert transfer_main(argv(name, *extra), callbacks=[losses]) == 0
    assert len(losses.losses) == 1 and math.isfinite(losses.losses[0])  # 8 images, one batch of 8
