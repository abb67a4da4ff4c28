"""Tuning methods, each applied on top of a plain ViT without renaming its parameters."""
from .adaptformer import Adapter, AdaptFormerConfig, apply_adaptformer, is_adapter_parameter
from .registry import METHODS, Method, get_method, list_methods

__all__ = ["Adapter", "AdaptFormerConfig", "METHODS", "Method", "apply_adaptformer", "get_method",
           "is_adapter_parameter", "list_methods"]
