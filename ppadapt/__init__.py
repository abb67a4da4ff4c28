"""ppadapt: parameter-efficient transfer learning of Vision Transformers in PaddlePaddle.

Importing ppadapt before Paddle applies the fast CPU thread settings (see
:mod:`ppadapt.runtime`) unless the user has set them already.
"""
from .runtime import apply_cpu_defaults, import_paddle_quietly

apply_cpu_defaults()
import_paddle_quietly()

from .freeze import count_parameters, set_trainable, trainable_parameters  # noqa: E402
from .methods import AdaptFormerConfig, apply_adaptformer  # noqa: E402
from .models import VisionTransformer, ViTConfig  # noqa: E402

__version__ = "0.1.0"
__all__ = ["AdaptFormerConfig", "VisionTransformer", "ViTConfig", "apply_adaptformer",
           "count_parameters", "set_trainable", "trainable_parameters", "__version__"]
