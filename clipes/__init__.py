"""clipes: weakly supervised semantic segmentation with a frozen OpenAI CLIP.

The public API is small: load a CLIP (:func:`load_clip`), wrap its image tower
(:class:`DenseViT`), compute softmax-GradCAMs (:func:`softmax_gradcam`), or run stage 1 on a
dataset split (:func:`run_cams` with :class:`CamOptions`). Importing clipes does no I/O.
"""

__version__ = "0.1.0"

from clipes.backbones.clip_loader import load_clip  # noqa: E402
from clipes.backbones.vit import DenseViT  # noqa: E402
from clipes.clip_es.cam_runner import CamOptions, run_cams  # noqa: E402
from clipes.maps.gradcam import softmax_gradcam  # noqa: E402

__all__ = ["CamOptions", "DenseViT", "load_clip", "run_cams", "softmax_gradcam", "__version__"]
