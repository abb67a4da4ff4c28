"""Tuning methods, each applied on top of a plain ViT without renaming its parameters."""
from .adaptformer import Adapter, AdaptFormerConfig, apply_adaptformer, is_adapter_parameter
from .base import Tuner, added_parameter_names, adapter_file_meta, applied_methods
from .registry import METHODS, Method, get_method, legacy_owner, legacy_sections, list_methods, method_of_flag

# What ``import ppadapt`` offers at its top level, besides the model and the trainability helpers.
PACKAGE_EXPORTS = ["AdaptFormerConfig", "apply_adaptformer"]

__all__ = ["Adapter", "AdaptFormerConfig", "METHODS", "Method", "PACKAGE_EXPORTS", "Tuner", "added_parameter_names",
           "adapter_file_meta", "applied_methods", "apply_adaptformer", "get_method", "is_adapter_parameter",
           "legacy_owner", "legacy_sections", "list_methods", "method_of_flag"]
