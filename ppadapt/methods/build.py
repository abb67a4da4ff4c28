"""The network a config describes: the plain ViT, the modules it carries, and the
transfer method applied on top with everything else frozen."""
from __future__ import annotations

from ..config import Config, transfer_method
from ..models.vit import VisionTransformer
from .adaptformer import apply_adaptformer
from .registry import Method, get_method
from .trainable import set_trainable


def build_model(cfg: Config, class_num: int) -> VisionTransformer:
    """The plain ViT of ``cfg.model``, with AdaptFormer branches if ``cfg.adapter.enabled``."""
    model = VisionTransformer(cfg.model, class_num=class_num)
    if cfg.adapter.enabled:
        apply_adaptformer(model, cfg.adapter.method_config())
    return model


def apply_freezing(model: paddle.nn.Layer, freeze: bool) -> None:
    """Frozen: only the AdaptFormer branches and the head train. Otherwise everything does."""
    set_trainable(model, get_method("adaptformer" if freeze else "full").is_trainable)


def apply_transfer_method(model: VisionTransformer, cfg: Config) -> Method:
    """Inject the transfer method into ``model`` and freeze everything it does not own.

    AdaptFormer reuses the branches the model already has (the tutorial pretrains
    them); every other method comes on top of the whole pretrained network.
    """
    method = get_method(transfer_method(cfg))
    if method.name == "adaptformer" and not cfg.adapter.enabled:
        apply_adaptformer(model, cfg.adapter.method_config())
    elif method.name != "adaptformer":
        method.apply_to(model, **cfg.method.options)
    set_trainable(model, method.is_trainable)
    return method
