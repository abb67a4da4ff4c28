"""The network a config describes: the plain ViT, the modules it carries, and the
transfer method applied on top with everything else frozen."""
from __future__ import annotations

import paddle

from ..config import Config, carried_config, method_config, transfer_method
from ..config.tuning import FREEZE
from ..models.build import build_backbone
from .base import Tuner
from .registry import get_method, method_of_flag
from .trainable import ParamCount, count_parameters


def build_model(cfg: Config, class_num: int) -> paddle.nn.Layer:
    """The plain backbone of ``cfg.model`` (a ViT or a Swin) with the modules it carries
    (``model.carry``, in order)."""
    model = build_backbone(cfg.model.architecture(), class_num)
    for name in cfg.model.carry:
        get_method(name).apply(model, carried_config(cfg, name))
    return model


def apply_freezing(model: paddle.nn.Layer, freeze: bool) -> None:
    """Frozen: only what ``--freeze``'s method owns and the head train. Otherwise everything does."""
    (method_of_flag(FREEZE) if freeze else get_method("full")).mark_trainable(model)


def apply_transfer_method(model: paddle.nn.Layer, cfg: Config) -> Tuner:
    """Inject the transfer method into ``model`` and freeze everything it does not own.

    A method the model carries (e.g. branches pretrained upstream) reuses its modules:
    only trainability changes. Any other comes on top of the whole pretrained network.
    """
    method = get_method(transfer_method(cfg))
    if not method.is_applied(model):
        method.apply(model, method_config(cfg))
    method.mark_trainable(model)
    return method


def count_transfer_parameters(cfg: Config, class_num: int) -> ParamCount:
    """The parameter counts of the transfer model ``cfg`` describes (``--dry-run``), from shapes
    alone: built under ``paddle.LazyGuard``, so no weight is allocated (ViT-L: 300 M floats)."""
    with paddle.LazyGuard():
        model = build_model(cfg, class_num)
        apply_transfer_method(model, cfg)
    return count_parameters(model)
