# Copyright 2026 The modeling_dart Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""PyTorch DART reshaper classifier: DART's image reshaper in front of any image classifier (DART's second form; the
released darmt-L6 is RMT-L6 behind it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput, auto_docstring
from transformers.utils.generic import can_return_tuple

from .configuration_reshaper_dart import DartReshaperConfig, is_image_classifier_config
from .modeling_dart import DART_LABELS_ARG, DartPreTrainedModel, _mark_trunk, check_classification_labels
from .modeling_rmt import RmtForImageClassification
from .reshaper_dart import DartImageReshaper

# Classifiers this package defines, by model type: built directly, so that a folder's remote code builds them where
# the package is not installed (the Auto classes do not know them there).
LOCAL_CLASSIFIERS = {"rmt": RmtForImageClassification}


def build_image_classifier(config):
    """The image classifier of a backbone configuration: this package's for its own model types (RMT), else
    `AutoModelForImageClassification.from_config`."""
    if not is_image_classifier_config(config):
        raise ValueError(f"`backbone_config` must configure an image classifier, got {type(config).__name__} "
                         f"(model_type {getattr(config, 'model_type', None)!r}).")
    local = LOCAL_CLASSIFIERS.get(config.model_type)
    if local is not None:
        return local._from_config(config)
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_config(config)


@auto_docstring(
    custom_intro="Output of [`DartReshaperForImageClassification`]: the logits, the loss and the warp (the warped "
    "image, its row and column edges in input pixels and the score map), from which a visualiser draws the warped "
    "grid on the input and the warped image beside it.",
    custom_args=r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
        Classification (or regression) loss.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Classification scores (before softmax).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The backbone's hidden states, as the backbone returns them.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
        The backbone's attention maps, where it has any.
    warped_pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, h, w)`):
        The warped image that the backbone classified (`h = num_rows * patch_size`, `w = num_cols * patch_size`).
    score_map (`torch.FloatTensor` of shape `(batch_size, score_grid_size, score_grid_size)`):
        The scorer's map that placed the rows and columns.
    row_edges (`torch.FloatTensor` of shape `(batch_size, num_rows + 1)`):
        Warped row band `i` reads input rows `[row_edges[i], row_edges[i + 1])`, in input pixels.
    col_edges (`torch.FloatTensor` of shape `(batch_size, num_cols + 1)`):
        Warped column band `j` reads input columns `[col_edges[j], col_edges[j + 1])`, in input pixels.
""",
)
@dataclass
class DartReshaperImageClassifierOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    warped_pixel_values: torch.FloatTensor | None = None
    score_map: torch.FloatTensor | None = None
    row_edges: torch.FloatTensor | None = None
    col_edges: torch.FloatTensor | None = None


@auto_docstring(custom_intro="Base class of the DART reshaper models: the DART initialisation of the reshaper's "
                "scorer (the backbone initialises itself).")
class DartReshaperPreTrainedModel(DartPreTrainedModel):
    config_class = DartReshaperConfig
    config: DartReshaperConfig
    base_model_prefix = "dart_reshaper"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["DartImageReshaper"]
    _can_record_outputs = {}  # the backbone records its own hidden states
    # the scorer stays float32 in a half-precision model: its rounding would move the warp (DartScorer._apply)
    _keep_in_fp32_modules_strict = ["reshaper.scorer"]
    _remote_auto_map = {
        "AutoConfig": "configuration_reshaper_dart.DartReshaperConfig",
        "AutoModelForImageClassification": "modeling_reshaper_dart.DartReshaperForImageClassification",
    }


DART_RESHAPER_CALL_ARGS = r"""
    pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
        Normalised pixels (see [`DartImageProcessor`]; 448x448 for darmt-L6). Sides multiples of `patch_size *
        downscale_factor`, or any size with `output_size`.
    output_size (`int` or `tuple[int, int]`, *optional*):
        The warped size for this call (multiples of `patch_size`); defaults to `config.output_size`, else the input's
        size divided by `config.downscale_factor`.
    score_normalization (`str`, *optional*):
        `"image"` or `"batch"`; overrides `config.score_normalization` for this call.
"""


@auto_docstring(custom_intro="DART's image reshaper in front of an image classifier: the reshaper warps the input "
                "(rows and columns from the quantiles of the score map's marginals, every cell resampled to "
                "`patch_size` pixels), and the classifier built from `config.backbone_config` (RMT, ConvNeXt, Swin, "
                "ResNet, ...) classifies the warped image.")
class DartReshaperForImageClassification(DartReshaperPreTrainedModel):

    def __init__(self, config: DartReshaperConfig):
        if getattr(config, "model_type", None) != DartReshaperConfig.model_type or not hasattr(config, "reshaper_kwargs"):
            raise TypeError(f"DartReshaperForImageClassification takes a `DartReshaperConfig`, got `config` of type "
                            f"{type(config).__name__}.")
        config.validate_reshaper()
        super().__init__(config)
        self.num_labels = config.num_labels
        self.reshaper = DartImageReshaper(**config.reshaper_kwargs())
        self.backbone = build_image_classifier(config.backbone_config)
        _mark_trunk(self)
        self.post_init()

    @can_return_tuple
    @auto_docstring(custom_args=DART_RESHAPER_CALL_ARGS + DART_LABELS_ARG)
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_size: int | tuple[int, int] | None = None,
        score_normalization: str | None = None,
        **kwargs,
    ) -> DartReshaperImageClassifierOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values` of shape (batch, channels, height, width).")
        warp = self.reshaper(pixel_values, output_size=output_size, score_normalization=score_normalization)
        warped = warp.warped_pixel_values.to(self.backbone.dtype)
        outputs = self.backbone(pixel_values=warped, return_dict=True, **kwargs)
        logits = outputs.logits
        loss = None
        if labels is not None:
            labels, problem_type = check_classification_labels(labels, logits, self.config)
            self.config.problem_type = problem_type
            loss = self.loss_function(labels.to(logits.device), logits, self.config)
        return DartReshaperImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
            warped_pixel_values=warp.warped_pixel_values,
            score_map=warp.score_map,
            row_edges=warp.row_edges,
            col_edges=warp.col_edges,
        )


__all__ = [
    "DartReshaperPreTrainedModel",
    "DartReshaperForImageClassification",
    "DartReshaperImageClassifierOutput",
    "build_image_classifier",
]
