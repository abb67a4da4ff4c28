"""Tuning methods, each applied on top of a plain ViT without renaming its parameters."""
from .adaptformer import Adapter, AdaptFormerConfig, apply_adaptformer, is_adapter_parameter

__all__ = ["Adapter", "AdaptFormerConfig", "apply_adaptformer", "is_adapter_parameter"]
