from .vit import VisionTransformer, ViTConfig

__all__ = ["VisionTransformer", "ViTConfig"]
