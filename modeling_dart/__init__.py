"""DART (Differentiable Dynamic Adaptive Region Tokenizer) for Hugging Face Transformers.

Importing this package registers DART with `AutoConfig`, `AutoModel`, `AutoModelForImageClassification`,
`AutoModelForVideoClassification`, `AutoImageProcessor` (the image processor) and the video-processor mapping (the
video processor), so that `from_pretrained` and `pipeline(...)` work on DART folders.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForVideoClassification

from .configuration_dart import DartConfig
from .image_processing_dart import (
    DartImageProcessor,
    DartImageProcessorPil,
    DartTrainTransform,
    random_resized_crop_and_flip,
    register_image_processor,
)
from .modeling_dart import (
    DartForImageClassification,
    DartImageClassifierOutput,
    DartModel,
    DartModelOutput,
    DartPreTrainedModel,
)
from .trunks_dart import load_scorer_trunk_weights
from .modeling_video_dart import (
    DartVideoClassifierOutput,
    DartVideoMambaForVideoClassification,
    DartVideoMambaModel,
    DartVideoModelOutput,
)
from .video_processing_dart import (
    DartVideoProcessor,
    DartVideoProcessorPil,
    load_video,
    register_video_processor,
    sample_frame_indices,
)

__version__ = "0.1.0"

AutoConfig.register("dart", DartConfig, exist_ok=True)
AutoModel.register(DartConfig, DartModel, exist_ok=True)
AutoModelForImageClassification.register(DartConfig, DartForImageClassification, exist_ok=True)
register_image_processor(DartConfig)
AutoModelForVideoClassification.register(DartConfig, DartVideoMambaForVideoClassification, exist_ok=True)
register_video_processor(DartConfig)

# Folders written by `save_pretrained` carry the modeling code and an `auto_map`, so that they also load with
# `trust_remote_code=True` where this package is not installed.
DartConfig.register_for_auto_class()
DartModel.register_for_auto_class("AutoModel")
DartForImageClassification.register_for_auto_class("AutoModelForImageClassification")
DartImageProcessor.register_for_auto_class("AutoImageProcessor")
DartVideoMambaModel.register_for_auto_class("AutoModel")
DartVideoMambaForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")
DartVideoProcessor.register_for_auto_class("AutoVideoProcessor")

__all__ = [
    "DartConfig",
    "DartImageProcessor",
    "DartImageProcessorPil",
    "DartTrainTransform",
    "random_resized_crop_and_flip",
    "DartModel",
    "DartForImageClassification",
    "DartPreTrainedModel",
    "DartModelOutput",
    "DartImageClassifierOutput",
    "DartVideoMambaModel",
    "DartVideoMambaForVideoClassification",
    "DartVideoModelOutput",
    "DartVideoClassifierOutput",
    "DartVideoProcessor",
    "DartVideoProcessorPil",
    "load_scorer_trunk_weights",
    "load_video",
    "sample_frame_indices",
]
