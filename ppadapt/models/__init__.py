from .build import build_backbone
from .swin import SwinConfig, SwinTransformer
from .vit import VisionTransformer, ViTConfig

__all__ = ["SwinConfig", "SwinTransformer", "VisionTransformer", "ViTConfig", "build_backbone"]
