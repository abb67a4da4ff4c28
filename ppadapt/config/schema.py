"""The sections of a config (typed dataclasses) and the checks of a value against a field's type."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import ConfigError
from ..models.swin import SwinConfig
from ..models.vit import ViTConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"
STAGES = ("pretrain", "transfer")
SCHEDULES = ("warmup_epoch_cosine", "warmup_step_cosine", "step_decay", "bit_hyperrule")
# Schedules that are rules, decided from the training set once a fresh run has loaded it
# (ppadapt/training/hyperrule.py), and the stage keys each decides: a config that names the
# rule must not also set them.
SCHEDULE_RULES = {"bit_hyperrule": ("epochs", "warmup_steps", "warmup_epochs", "decay_at", "mixup_alpha")}
OPTIMIZERS = ("momentum", "sgd", "adamw")
NO_DECAY = ("auto", "standard", "none")  # which parameters weight decay skips (training/optim.py)
LR_SCALES = ("none", "linear256")
AUGMENTATIONS = ("tutorial", "crop_flip", "rrc_flip", "none")  # ppadapt/data/transforms.py
EVAL_RESIZES = ("none", "resize_center_crop")
RESOLUTIONS = ("fixed", "bit")  # ppadapt/data/resolution.py
SAVE_FORMATS = ("pdparams", "safetensors")  # best/final: Paddle's pickle, or safetensors (runs/checkpoint.py)
DEVICES = ("auto", "cpu", "gpu")  # auto: what this Paddle was built for (utils/device.py)
AMP_LEVELS = ("off", "O1", "O2")  # mixed precision (training/precision.py)
AMP_DTYPES = ("float16", "bfloat16")
# Keys whose choices include "off": YAML reads a bare off / no / false as false, which means "off".
OFF_KEYS = ("amp",)


@dataclass
class ModelSection(ViTConfig):
    """The network of a config: a ViT architecture (:class:`ViTConfig`'s keys), plus

    * ``carry``: the methods whose modules the backbone carries from pretraining on, with
      their options (``{name: {option: value}}``, e.g. the tutorial's branches pretrained
      upstream); empty: a plain ViT. A transfer method the model carries reuses those
      modules; any other comes on top.
    * ``drop_border``: a patch size that does not divide the image size is an error unless
      this is true; then the border pixels that do not fill a whole patch are dropped
      (PaddleClas's patch embedding; the tutorial's 3-pixel patches on 32-pixel images).
    * ``backbone``: the PaddleClas constructor this architecture is (``transfer.py --backbone``
      sets it); a pretrained file with no ppadapt ``run.json`` beside it is then normalised
      as that backbone's weights (None: mean = std = 0.5, PaddleClas's ViTs').
    * ``arch``: ``vit`` (the keys above) or ``swin``: a Swin Transformer (``--backbone
      SwinTransformer_*`` sets it) of width ``embed_dim``, ``depths`` blocks per stage,
      ``stage_heads`` heads per stage and ``window_size``; its ``img_size``, ``patch_size``,
      ``in_chans``, ``mlp_ratio``, ``qkv_bias``, ``epsilon``, drop rates, ``head`` and
      ``head_init`` are the keys above, and the ViT-only keys stay at their defaults.
    * ``layers``: the Linear/LayerNorm/GELU/softmax code training runs (``auto``: the
      hand-written CPU backward on the CPU, Paddle's own kernels on a GPU; ``fast``; ``native``;
      ``fused``: ppadapt's C++ CPU kernels, within float tolerance of ``fast``), see
      :func:`ppadapt.models.fast_layers.layer_path`. Same parameters either way.
    """

    carry: dict = field(default_factory=dict)
    drop_border: bool = False
    backbone: str | None = None
    layers: str = "auto"  # auto | fast | native | fused
    arch: str = "vit"  # vit | swin
    depths: list[int] | None = None  # swin: blocks per stage
    stage_heads: list[int] | None = None  # swin: heads per stage
    window_size: int | None = None  # swin: the attention window's side, in tokens

    def architecture(self) -> ViTConfig | SwinConfig:
        """The architecture of this section: a :class:`ViTConfig`, or a :class:`SwinConfig` for
        ``arch: swin`` (what :func:`ppadapt.models.build_backbone` takes)."""
        if self.arch == "swin":
            shared = {k: getattr(self, k) for k in SWIN_SHARED}
            return SwinConfig(**shared, depths=tuple(self.depths or ()), num_heads=tuple(self.stage_heads or ()),
                              window_size=self.window_size or 0)
        return ViTConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ViTConfig)})

    @classmethod
    def plain(cls, arch: ViTConfig | SwinConfig, **changes: Any) -> "ModelSection":
        """A section of architecture ``arch`` (with ``changes``) that carries nothing."""
        if isinstance(arch, SwinConfig):
            values = {k: getattr(arch, k) for k in SWIN_SHARED}
            values.update(arch="swin", depths=list(arch.depths), stage_heads=list(arch.num_heads),
                          window_size=arch.window_size)
        else:
            values = {f.name: getattr(arch, f.name) for f in dataclasses.fields(ViTConfig)}
        return cls(**{**values, **changes})


# The ViT keys a Swin architecture takes as they are (its others are depths, stage_heads, window_size).
SWIN_SHARED = ("img_size", "patch_size", "in_chans", "embed_dim", "mlp_ratio", "qkv_bias", "epsilon", "drop_rate",
               "attn_drop_rate", "drop_path_rate", "head", "head_init")
SWIN_KEYS = ("depths", "stage_heads", "window_size")
ARCHS = ("vit", "swin")


@dataclass
class StageConfig:
    """Data and optimisation of one stage (pretraining or transfer)."""

    dataset: str = "cifar10"
    data_file: str | None = None
    data_dir: str | None = None
    classes: list[int] | None = None
    augment: bool = True  # false: no augmentation (augmentation: none), the older key
    augmentation: str = "tutorial"  # tutorial | crop_flip | rrc_flip | none
    eval_resize: str = "none"  # none | resize_center_crop (shorter side to img_size/0.875, centre crop)
    resolution: str = "fixed"  # fixed: model.img_size | bit: BiT's rule sets it from the images' size
    mixup_alpha: float = 0.0  # > 0: MixUp with lam ~ Beta(alpha, alpha)
    cutmix_alpha: float = 0.0  # > 0: CutMix; both > 0: one or the other per batch, 50/50
    mix_prob: float = 1.0  # the chance that a batch is mixed at all
    num_workers: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "warmup_epoch_cosine"  # warmup_epoch_cosine | warmup_step_cosine | step_decay | bit_hyperrule
    warmup_steps: int | None = 2000  # linear warm-up in batches; null when warmup_epochs gives it
    min_lr: float = 0.0  # the schedule's floor (of the base LR; per-parameter multipliers apply on top)
    # Optimizers and schedules (README "Optimizers and schedules"; built in training/optim.py).
    # The defaults are the original Momentum + coupled L2 on every parameter.
    optimizer: str = "momentum"  # momentum (Momentum + L2) | sgd (plain SGD + L2) | adamw (decoupled decay)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw's beta1, beta2
    eps: float = 1e-8  # adamw's epsilon
    no_decay: str = "auto"  # standard: biases, norms, tokens, prompts not decayed; none: all decayed;
    #                         auto: none for momentum (as before), standard for sgd and adamw
    lr_scale: str = "none"  # linear256: lr * batch_size * processes / 256
    layer_decay: float = 1.0  # layer-wise LR decay (< 1: lower blocks learn slower); 1: off
    head_lr_mult: float = 1.0  # LR multiplier of the classifier head (head.*)
    clip_grad_norm: float | None = None  # clip the global gradient norm to this; null: no clipping
    warmup_epochs: float | None = None  # the warm-up in epochs instead (set warmup_steps: null)
    decay_at: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.9])  # step_decay: fractions of the run
    decay_factor: float = 0.1  # step_decay: the LR is multiplied by this at each of decay_at
    label_smoothing: float = 0.0  # cross-entropy against (1 - e) * one-hot + e / classes
    log_freq: int = 10
    # Model selection without the test set: this share of every class's training images
    # (seeded by ``seed``) becomes a validation set that picks the best epoch; 0: off, the
    # best epoch is picked on test. ``val_dir``: an image folder's own validation images
    # (<class>/* subfolders, e.g. DIR/val) instead.
    val_split: float = 0.0
    val_dir: str | None = None
    # Speed and memory (README "Device, mixed precision, layers and recomputation"): mixed precision
    # (off | O1: ops in the autocast lists in amp_dtype | O2: the frozen weights in amp_dtype too,
    # trainable method parameters and the head in float32), and recomputing each block's
    # activations in the backward instead of keeping them.
    amp: str = "off"
    amp_dtype: str = "float16"  # float16 (loss scaling) | bfloat16
    recompute: bool = False


@dataclass
class PretrainConfig(StageConfig):
    dataset: str = "cifar100"


@dataclass
class TransferConfig(StageConfig):
    freeze: bool = False  # --freeze: the transfer method is the one that flag stands for
    pretrained: str | None = None  # None: the final checkpoint of this config's pretraining run
    resume_adapter: str | None = None  # an adapter (folder; older: adapter.pdparams) to start the method from
    # A method's own recipe: {method: {stage key: value}}, applied when that method is the
    # transfer method (config/recipes.py); a key the command line sets (-o, --lr) wins.
    by_method: dict = field(default_factory=dict)


@dataclass
class MethodSection:
    """The tuning method of the transfer stage and its options (``-o method.rank=8``).

    Option names depend on the method, so they are checked against the method's
    own config in :func:`ppadapt.config.validate` rather than by this dataclass.
    """

    name: str = "full"
    options: dict = field(default_factory=dict)


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    method: MethodSection = field(default_factory=MethodSection)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    seed: int = 42
    output: str = "output"
    name: str = "tutorial"  # prefix of the run directories under ``output``
    save_format: str = "pdparams"  # best/final checkpoints: pdparams (paddle.save) | safetensors (no pickle)
    device: str = "auto"  # auto (what this Paddle was built for) | cpu | gpu; --device

    def stage(self, which: str) -> StageConfig:
        return getattr(self, which)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- typed values ----------------------------------------------------------------------

def field_names(node: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(node)]


def field_types(node: Any) -> dict:
    return typing.get_type_hints(node if isinstance(node, type) else type(node))


def unknown_key(names: list[str], section: str, key: str, source: str) -> ConfigError:
    """The error of an unknown key ``key`` in ``section`` (valid keys ``names``), with a suggestion."""
    where = f"in section '{section}'" if section else "at top level"
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(names)}"
    origin = f"{source}: " if source else ""
    return ConfigError(f"{origin}unknown config key '{key}' {where}; {hint}")


def parse_scalar(raw: str) -> Any:
    """The value of ``-o KEY=VALUE``'s VALUE: YAML (``8``, ``true``, ``[1, 2]``), else the text."""
    raw = raw.strip()
    try:
        return yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        return raw


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's type; accept ints for floats and '1e-4' strings."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], key)
        for kind in inner:  # e.g. int | str: the first of the types the value fits, in order
            try:
                return coerce(value, kind, key)
            except ConfigError:
                pass
        names = " or ".join(getattr(kind, "__name__", str(kind)) for kind in inner)
        raise ConfigError(f"{key} must be {names}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if value is False and key.rsplit(".", 1)[-1] in OFF_KEYS:
            return "off"
    kind = "a mapping" if annotation is dict or origin is dict else getattr(annotation, "__name__", str(annotation))
    example = {int: "a whole number, e.g. 10", float: "a number, e.g. 0.01", bool: "true or false",
               str: "a text value"}.get(annotation)
    raise ConfigError(f"{key} must be {kind}, got {value!r}" + (f" (give {example})" if example else ""))
