"""Command lines of ``train.py`` (pretraining) and ``transfer.py`` (transfer).

Both share the options that map onto a config stage; a user-fixable problem
ends the program with one ``error:`` line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..config import (CONFIG_DIR, SCHEDULE_RULES, Config, load_config, parse_scalar, set_backbone, set_value,
                      validate)
from ..config.flags import apply_flags, explicit_keys, presets
from ..data.bundle import class_count
from ..data.resolution import resolve_resolution
from ..errors import ConfigError
from ..methods import list_methods
from ..methods.build import count_transfer_parameters
from ..models.paddleclas_archs import list_backbones, paddleclas_vit_config
from ..runs.pretrained import paddleclas_ref
from ..training.engine import run_stage
from ..training.resume import prepare_resume
from .tool import ArgumentParser, run_tool

DATASET_CHOICES = ("cifar10", "cifar100", "digits", "folder")


def _common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE.yaml",
                   help="experiment protocol (default: configs/tutorial.yaml; configs/digits.yaml "
                        "for the digits demo)")
    p.add_argument("--data-file", metavar="PATH",
                   help="local cifar-10-python.tar.gz / cifar-100-python.tar.gz (no download is tried)")
    p.add_argument("--data-dir", metavar="DIR", help="image folder with DIR/train/<class>/*, DIR/test/<class>/*")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="base learning rate (peak after warmup)")
    p.add_argument("--output", metavar="DIR", help="root of the run directories (default: output)")
    p.add_argument("--seed", type=int)
    add_device_flag(p)
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. -o model.depth=6 -o lr=0.1 (bare stage keys "
                        "apply to this tool's stage); an unknown key is an error")
    p.add_argument("--quiet", action="store_true", help="no per-step progress lines")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR|FILE",
                   help="continue an interrupted run from its resume.pdckpt (written every epoch and on "
                        "Ctrl-C): with no value, the run directory of this config and stage; it keeps the "
                        "run's saved settings (only --data-file/--data-dir and -o num_workers/log_freq may "
                        "change) and appends to its run.json and VisualDL logs")
    return p


def add_device_flag(p: argparse.ArgumentParser) -> None:
    """``--device cpu|gpu`` (the config key ``device``; default: what this Paddle was built for)."""
    p.add_argument("--device", choices=("cpu", "gpu"),
                   help="where to train (default: the config's device, auto: gpu with the GPU build of Paddle, "
                        "else cpu)")


def _resume_point(args: argparse.Namespace, cfg: Config, stage: str):
    """``--resume``: the checkpoint and the config to continue with, or None."""
    if args.resume is None:
        return None
    return prepare_resume(cfg, stage, args.resume, explicit_keys(args, stage))


def load_tool_config(args: argparse.Namespace, stage: str, dataset: str | None) -> Config:
    """The config a command line describes: ``--config`` (default by ``dataset``), the flags
    and ``-o`` overrides of the flag table, ``--backbone``; validated. (tune.py builds one per run.)"""
    path = args.config
    if path is None:
        path = CONFIG_DIR / ("digits.yaml" if dataset == "digits" else "tutorial.yaml")

    def flags(cfg: Config) -> list[str]:  # before the config is validated: --backbone changes the model
        keys = apply_flags(cfg, args, stage)
        if getattr(args, "backbone", None) is not None:
            use_backbone(cfg, args.backbone, args.override)
        return keys

    return load_config(path, args.override, stage=stage, preset=presets(args, stage), then=flags)


def use_backbone(cfg: Config, name: str, overrides: Sequence[str] = ()) -> None:
    """Switch the model to a PaddleClas backbone's architecture (a ViT, or a Swin): a plain one
    that carries no method, so every method's modules come from the transfer method (which keeps the
    options the config gave it as a carried one).

    The config's classifier (``model.head``, ``model.head_init``) is kept: it is not the
    backbone's. The ``-o model.KEY=VALUE`` overrides are applied again on top of the backbone's
    architecture (e.g. ``-o model.img_size=32 -o model.patch_size=4`` for CIFAR at its
    own size: the position embedding and patch kernel are resampled when loading).
    With no pretrained checkpoint set, the weights are PaddleClas's own
    (``transfer.pretrained: paddleclas:NAME``, downloaded once and cached). Runs go to
    ``output/<config>_<backbone>_transfer_...``.
    """
    try:
        arch = paddleclas_vit_config(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    set_backbone(cfg, arch, backbone=name, head=cfg.model.head, head_init=cfg.model.head_init)
    cfg.name = f"{cfg.name}_{name}"  # its own run folder, not the config's from-scratch runs'
    for item in overrides:
        key, _, raw = item.partition("=")
        key = key.strip()
        if key.startswith("model.") and key.split(".")[1] != "carry":  # a backbone carries nothing
            set_value(cfg, key, parse_scalar(raw), source="-o")
    if cfg.transfer.pretrained is None:
        cfg.transfer.pretrained = paddleclas_ref(name)
    validate(cfg)


def train_main(argv: Sequence[str] | None = None, callbacks: Sequence = ()) -> int:
    """``train.py``; ``callbacks``: extra ``paddle.callbacks.Callback`` objects for the run."""
    p = _common_parser("train.py", "Pretrain a ViT with AdaptFormer branches from scratch.\n\n"
                       "  python ppadapt/train.py --pretrain cifar100\n"
                       "  python ppadapt/train.py --pretrain digits        # offline demo, ~1 min")
    p.add_argument("--pretrain", "--dataset", dest="dataset", choices=DATASET_CHOICES,
                   help="upstream dataset (default: the config's pretrain.dataset)")
    args = p.parse_args(argv)

    def main() -> int:
        cfg = load_tool_config(args, "pretrain", args.dataset)
        run_stage(cfg, "pretrain", verbose=0 if args.quiet else 2, resume=_resume_point(args, cfg, "pretrain"),
                  callbacks=callbacks)
        return 0
    return run_tool(main, notes="stdout")


def transfer_main(argv: Sequence[str] | None = None, callbacks: Sequence = ()) -> int:
    """``transfer.py``; ``callbacks``: extra ``paddle.callbacks.Callback`` objects for the run."""
    p = _common_parser("transfer.py", "Transfer a pretrained ViT to a downstream dataset.\n\n"
                       "  python ppadapt/transfer.py --freeze    # AdaptFormer: only branches + head train\n"
                       "  python ppadapt/transfer.py             # full fine-tuning (the control)")
    p.add_argument("--dataset", choices=DATASET_CHOICES,
                   help="downstream dataset (default: the config's transfer.dataset)")
    p.add_argument("--freeze", action="store_true",
                   help="freeze the backbone: train only the AdaptFormer branches and the new head")
    p.add_argument("--pretrained", metavar="CKPT",
                   help="backbone checkpoint: a .pdparams or .safetensors of ppadapt, or PaddleClas's .pdparams "
                        "(default: the final "
                        "checkpoint of train.py with the same config, under output/; with --backbone, "
                        "PaddleClas's ImageNet weights, downloaded once to ~/.paddleclas/weights); "
                        "'none' trains from scratch")
    p.add_argument("--method", metavar="NAME",
                   help="tuning method (see --list-methods; default: full fine-tuning, or the config's "
                        "method.name); options with -o method.KEY=VALUE")
    p.add_argument("--resume-adapter", metavar="PATH",
                   help="start the method's tensors (and head) from an adapter that transfer.py wrote: its "
                        "adapter/ folder (or the run folder holding it), or an older adapter.pdparams")
    p.add_argument("--list-methods", action="store_true", help="list the methods with their options and exit")
    p.add_argument("--backbone", metavar="NAME",
                   help="a PaddleClas backbone: ViT_{base,large}_patch16_{224,384}, ViT_{base,large}_patch32_384, "
                        "DeiT_{tiny,small,base}_patch16_224, MAE_vit_base_patch16, BEiTv2_vit_{base,large}_patch16_224, "
                        "CLIP_vit_base_patch{16,32}_224, CLIP_vit_large_patch14_{224,336}, "
                        "SwinTransformer_{tiny,small,base}_patch4_window7_224, ... (see --list-backbones); "
                        "its architecture, its weights (unless --pretrained) and its normalisation "
                        "(ViT: mean = std = 0.5; DeiT, MAE, BEiTv2: ImageNet's; CLIP: CLIP's). -o model.img_size=N / "
                        "model.patch_size=P still apply: the position embedding and patch kernel are resampled")
    p.add_argument("--list-backbones", action="store_true", help="list the --backbone names and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model, apply freezing, print the parameter summary and exit (no data)")
    args = p.parse_args(argv)

    def main() -> int:
        if args.list_methods:
            print(list_methods())
            return 0
        if args.list_backbones:
            print(list_backbones())
            return 0
        cfg = load_tool_config(args, "transfer", args.dataset)
        if args.dry_run:
            cfg = resolve_resolution(cfg, "transfer", log=lambda line: None)  # the size training would use
            print(count_transfer_parameters(cfg, class_count(cfg, "transfer")))
            if cfg.transfer.schedule in SCHEDULE_RULES:  # on stderr: stdout is the summary alone
                print(f"note: transfer.schedule {cfg.transfer.schedule}: epochs, warm-up, LR decay steps and MixUp "
                      "are decided from the number of training images when the run has loaded them", file=sys.stderr)
            return 0
        run_stage(cfg, "transfer", verbose=0 if args.quiet else 2, resume=_resume_point(args, cfg, "transfer"),
                  callbacks=callbacks)
        return 0
    return run_tool(main, notes="stderr" if args.dry_run else "stdout")  # --dry-run's stdout is the summary alone
