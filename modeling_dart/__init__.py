"""DART (Differentiable Dynamic Adaptive Region Tokenizer) for Hugging Face Transformers.

Importing this package registers the two DART families with the Auto classes, so that `from_pretrained` and
`pipeline(...)` work on DART folders:

- images (`DartConfig`, model type `dart`): `AutoModel` -> `DartModel`, `AutoModelForImageClassification` ->
  `DartForImageClassification`, `AutoImageProcessor` -> `DartImageProcessor`;
- videos (`DartVideoConfig`, model type `dart_video`): `AutoModel` -> `DartVideoMambaModel`,
  `AutoModelForVideoClassification` -> `DartVideoMambaForVideoClassification`, `AutoVideoProcessor` ->
  `DartVideoProcessor`. Folders saved with `model_type: dart` and `backbone: videomamba` load as the video family.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForVideoClassification

from .configuration_dart import MOTION_PARITY_OPTIONS, DartConfig, DartVideoConfig
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
AutoConfig.register("dart_video", DartVideoConfig, exist_ok=True)
AutoModel.register(DartConfig, DartModel, exist_ok=True)
AutoModelForImageClassification.register(DartConfig, DartForImageClassification, exist_ok=True)
AutoModel.register(DartVideoConfig, DartVideoMambaModel, exist_ok=True)
AutoModelForVideoClassification.register(DartVideoConfig, DartVideoMambaForVideoClassification, exist_ok=True)
# both processors for both configs: `pipeline()` probes the image and the video processor of every folder, and an
# unregistered pair would send it to the folder's remote code (a prompt when `trust_remote_code` is unset)
for _config_class in (DartConfig, DartVideoConfig):
    register_image_processor(_config_class)
    register_video_processor(_config_class)

# Folders written by `save_pretrained` carry the modeling code and an `auto_map`, so that they also load with
# `trust_remote_code=True` where this package is not installed.
DartConfig.register_for_auto_class()
DartVideoConfig.register_for_auto_class()
DartModel.register_for_auto_class("AutoModel")
DartForImageClassification.register_for_auto_class("AutoModelForImageClassification")
DartImageProcessor.register_for_auto_class("AutoImageProcessor")
DartVideoMambaModel.register_for_auto_class("AutoModel")
DartVideoMambaForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")
DartVideoProcessor.register_for_auto_class("AutoVideoProcessor")

__all__ = [
    "DartConfig",
    "DartVideoConfig",
    "MOTION_PARITY_OPTIONS",
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

# RMT (VisRetNet, the backbone of the released darmt-L6) as a model family of its own: `RmtConfig` (model type `rmt`),
# `AutoModel` -> `RmtModel`, `AutoModelForImageClassification` -> `RmtForImageClassification`, `AutoBackbone` ->
# `RmtBackbone`; saved folders also load with `trust_remote_code=True`.
from transformers import AutoBackbone  # noqa: E402

from .configuration_rmt import RMT_PRESETS, RmtConfig  # noqa: E402
from .modeling_rmt import RmtBackbone, RmtForImageClassification, RmtModel, RmtPreTrainedModel  # noqa: E402

AutoConfig.register("rmt", RmtConfig, exist_ok=True)
AutoModel.register(RmtConfig, RmtModel, exist_ok=True)
AutoModelForImageClassification.register(RmtConfig, RmtForImageClassification, exist_ok=True)
AutoBackbone.register(RmtConfig, RmtBackbone, exist_ok=True)
RmtConfig.register_for_auto_class()
RmtModel.register_for_auto_class("AutoModel")
RmtForImageClassification.register_for_auto_class("AutoModelForImageClassification")
RmtBackbone.register_for_auto_class("AutoBackbone")

__all__ += ["RmtConfig", "RMT_PRESETS", "RmtPreTrainedModel", "RmtModel", "RmtForImageClassification", "RmtBackbone"]

# DART's second form: the image reshaper in front of any image classifier (`DartReshaperConfig`, model type
# `dart_reshaper`, with a nested `backbone_config`): `AutoModelForImageClassification` ->
# `DartReshaperForImageClassification`, `AutoImageProcessor` -> `DartImageProcessor`; saved folders also load with
# `trust_remote_code=True`.
from .configuration_reshaper_dart import DAIR_PARITY_OPTIONS, DartReshaperConfig  # noqa: E402
from .modeling_reshaper_dart import (  # noqa: E402
    DartReshaperForImageClassification,
    DartReshaperImageClassifierOutput,
    DartReshaperPreTrainedModel,
)
from .reshaper_dart import DartImageReshaper, DartReshaperOutput  # noqa: E402

AutoConfig.register("dart_reshaper", DartReshaperConfig, exist_ok=True)
AutoModelForImageClassification.register(DartReshaperConfig, DartReshaperForImageClassification, exist_ok=True)
register_image_processor(DartReshaperConfig)
register_video_processor(DartReshaperConfig)  # `pipeline()` probes both processors of every folder
DartReshaperConfig.register_for_auto_class()
DartReshaperForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ += ["DartReshaperConfig", "DAIR_PARITY_OPTIONS", "DartReshaperPreTrainedModel",
            "DartReshaperForImageClassification", "DartReshaperImageClassifierOutput", "DartImageReshaper",
            "DartReshaperOutput"]

# The reshaper for semantic segmentation (the same `DartReshaperConfig`, with a segmentation model's configuration as
# `backbone_config`, e.g. UperNet with a Swin / ConvNeXt / RMT backbone): `AutoModelForSemanticSegmentation` ->
# `DartReshaperForSemanticSegmentation`, which `pipeline("image-segmentation")` finds; saved folders also load with
# `trust_remote_code=True`.
from transformers import AutoModelForSemanticSegmentation  # noqa: E402

from .modeling_reshaper_dart import (  # noqa: E402
    DartReshaperForSemanticSegmentation,
    DartReshaperSemanticSegmenterOutput,
)

AutoModelForSemanticSegmentation.register(DartReshaperConfig, DartReshaperForSemanticSegmentation, exist_ok=True)
DartReshaperForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ += ["DartReshaperForSemanticSegmentation", "DartReshaperSemanticSegmenterOutput"]
