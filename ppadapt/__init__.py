"""ppadapt: parameter-efficient transfer learning of Vision Transformers in PaddlePaddle.

Importing ppadapt applies the fast CPU settings (threads, MKL, stride kernels,
malloc; see :mod:`ppadapt.utils.runtime`) unless the user has set them already. The
thread settings only take effect when ppadapt is imported before Paddle. A Paddle older
than ppadapt supports (3.2) stops the import with one line that says how to upgrade
(:mod:`ppadapt.utils.paddle_version`).
"""
import os as _os

from .utils.paddle_version import check_at_import
from .utils.runtime import apply_cpu_defaults, import_paddle_quietly, tune_cpu_runtime

apply_cpu_defaults()
import_paddle_quietly()
check_at_import(_os.path.dirname(__file__))
tune_cpu_runtime()

from .methods.trainable import count_parameters, set_trainable, trainable_parameters  # noqa: E402
from . import methods as _methods  # noqa: E402
from .models import VisionTransformer, ViTConfig  # noqa: E402
from .apps.predict import Predictor  # noqa: E402
from .apps.multitask import MultiTaskPredictor  # noqa: E402

globals().update({name: getattr(_methods, name) for name in _methods.PACKAGE_EXPORTS})  # the methods' top-level names

from .version import __version__  # noqa: E402
__all__ = ["MultiTaskPredictor", "Predictor", "VisionTransformer", "ViTConfig", *_methods.PACKAGE_EXPORTS,
           "count_parameters", "set_trainable", "trainable_parameters", "__version__"]
