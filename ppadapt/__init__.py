"""ppadapt: parameter-efficient transfer learning of Vision Transformers in PaddlePaddle.

Importing ppadapt applies the fast CPU settings (threads, MKL, stride kernels,
malloc; see :mod:`ppadapt.utils.runtime`) unless the user has set them already. The
thread settings only take effect when ppadapt is imported before Paddle.
"""
from .utils.runtime import apply_cpu_defaults, import_paddle_quietly, tune_cpu_runtime

apply_cpu_defaults()
import_paddle_quietly()
tune_cpu_runtime()

from .methods.trainable import count_parameters, set_trainable, trainable_parameters  # noqa: E402
from .methods import AdaptFormerConfig, apply_adaptformer  # noqa: E402
from .models import VisionTransformer, ViTConfig  # noqa: E402
from .apps.predict import Predictor  # noqa: E402

__version__ = "0.1.0"
__all__ = ["AdaptFormerConfig", "Predictor", "VisionTransformer", "ViTConfig", "apply_adaptformer",
           "count_parameters", "set_trainable", "trainable_parameters", "__version__"]
