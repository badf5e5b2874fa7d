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
"""PyTorch DART for video: adaptive-region tokens feeding a VideoMamba backbone.

Two tokenisers, chosen by `config.video_tokenizer`. `"motion"` places one budget of tokens over the whole clip where
the frames change (`motion_tokens_dart.DartMotionEmbeddings`, the authors' `DynamicVideoPatchEmbed`): the sequence is
the cls token then the clip's tokens, each with its resampled spatial and temporal positions. `"per_frame"` is
described below.

Every frame of a clip is tokenised by the shared DART embeddings (one scorer, one patch projection), giving
`num_tokens` adaptive tokens per frame with resampled spatial position embeddings. Each frame's tokens also get the
learned temporal position embedding of that frame. The frames are concatenated frame by frame (`(t, n)` order) after
ONE cls token (`cls_token + position_embeddings[0]`, no temporal term), and the sequence runs through the
bidirectional Mamba stack of VideoMamba (forward and backward scans summed, not halved). The cls output after the
final add + RMSNorm feeds the classifier.

With a uniform scorer, `image_size = score_grid_size * patch_size` (224) and `num_tokens = score_grid_size**2` (196),
the tokens are exactly the standard patch grid and the model is plain VideoMamba (see
`conversion/convert_videomamba_original.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput, auto_docstring
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_dart import DartVideoConfig
from .embeddings_dart import DartEmbeddings, DartEmbeddingsOutput
from .modeling_dart import DART_LABELS_ARG, DartMambaEncoder, DartPreTrainedModel, _mark_trunk, classify
from .motion_tokens_dart import DartMotionEmbeddings, DartMotionEmbeddingsOutput


# ------------------------------------------------------------------------------------------------------- outputs
DART_VIDEO_MODEL_OUTPUT_FIELDS = r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_frames * num_tokens, hidden_size)`):
        Final (normalised) hidden states: the cls token first, then the tokens of frame 0, frame 1, ... With the
        motion tokeniser `(batch_size, 1 + num_tokens, hidden_size)`: the cls token, then the clip's tokens.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        Final hidden state of the cls token (index 0).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        Embedding output plus the residual stream after each layer, each
        `(batch_size, 1 + num_frames * num_tokens, hidden_size)`.
    regions (`torch.FloatTensor` of shape `(batch_size, num_frames, num_tokens, 4)`):
        Source box `(x0, y0, x1, y1)` of each token of each frame, in input pixels. Motion tokeniser:
        `(batch_size, num_tokens, 4)` in pixels of the tall image of stacked frames (frame `y // height`).
    score_map (`torch.FloatTensor` of shape `(batch_size, num_frames, score_grid_size, score_grid_size)`):
        The score map that placed each frame's tokens (the same for all frames with `video_score_pooling="clip"`).
        Motion tokeniser: the motion scores on each frame's patch grid.
    token_edges (`torch.FloatTensor` of shape `(batch_size, num_frames, num_tokens + 1)`):
        Token boundaries along each frame's strip of token rows, in strip pixels. Motion tokeniser:
        `(batch_size, num_tokens + 1)` along the clip's strip.
    row_edges (`torch.FloatTensor` of shape `(batch_size, num_frames, num_rows + 1)`):
        Token-row boundaries of each frame in input pixels. Motion tokeniser: `(batch_size, num_rows + 1)` in pixels
        of the tall image.
    token_frames (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*):
        Motion tokeniser only: the frame of each token (of its box's centre).
"""


@auto_docstring(custom_intro="Output of [`DartVideoMambaModel`]: the final hidden states and each frame's token geometry.",
                custom_args=DART_VIDEO_MODEL_OUTPUT_FIELDS)
@dataclass
class DartVideoModelOutput(ModelOutput):

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    regions: torch.FloatTensor | None = None
    score_map: torch.FloatTensor | None = None
    token_edges: torch.FloatTensor | None = None
    row_edges: torch.FloatTensor | None = None
    token_frames: torch.LongTensor | None = None


DART_VIDEO_CLASSIFIER_OUTPUT_FIELDS = r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
        Classification (or regression) loss.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Classification scores (before softmax).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        As in [`DartVideoModelOutput`].
    regions (`torch.FloatTensor` of shape `(batch_size, num_frames, num_tokens, 4)`):
        Token boxes of each frame in input pixels.
    score_map (`torch.FloatTensor` of shape `(batch_size, num_frames, score_grid_size, score_grid_size)`):
        The score map that placed each frame's tokens.
    token_edges (`torch.FloatTensor` of shape `(batch_size, num_frames, num_tokens + 1)`):
        Per frame, as in [`DartVideoModelOutput`].
    row_edges (`torch.FloatTensor` of shape `(batch_size, num_frames, num_rows + 1)`):
        Per frame, as in [`DartVideoModelOutput`].
    token_frames (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*):
        Motion tokeniser only: the frame of each token.
"""


@auto_docstring(custom_intro="Output of [`DartVideoMambaForVideoClassification`]: the logits, the loss and the token "
                "geometry of every frame.", custom_args=DART_VIDEO_CLASSIFIER_OUTPUT_FIELDS)
@dataclass
class DartVideoClassifierOutput(ModelOutput):

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    regions: torch.FloatTensor | None = None
    score_map: torch.FloatTensor | None = None
    token_edges: torch.FloatTensor | None = None
    row_edges: torch.FloatTensor | None = None
    token_frames: torch.LongTensor | None = None


# ------------------------------------------------------------------------------------------------------ helpers
def interpolate_temporal_embeddings(table: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resize a temporal position table `(1, T0, D)` to `(1, num_frames, D)` by linear interpolation along time
    (`align_corners=False`, the rule VideoMamba's fine-tuning loader applies when the frame count changes). Returns
    `table` itself when `num_frames == T0`."""
    if table.shape[1] == num_frames:
        return table
    resized = F.interpolate(table.transpose(1, 2).float(), size=num_frames, mode="linear", align_corners=False)
    return resized.transpose(1, 2).to(table.dtype)


def check_video_pixel_values(pixel_values, num_channels: int, min_size: int) -> None:
    """Raise a clear `TypeError` / `ValueError` unless `pixel_values` is a float tensor (B, T, C, H, W)."""
    layout = f"(batch, frames, {num_channels}, height, width)"
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch.Tensor of shape {layout}, got {type(pixel_values).__name__}.")
    if pixel_values.dim() != 5:
        hint = " (a single image batch? use DartForImageClassification)" if pixel_values.dim() == 4 else ""
        raise ValueError(f"`pixel_values` must have shape {layout}, got a {pixel_values.dim()}-D tensor of shape "
                         f"{tuple(pixel_values.shape)}{hint}.")
    batch, frames, channels, height, width = pixel_values.shape
    if batch == 0 or frames == 0:
        raise ValueError(f"`pixel_values` has an empty batch or no frames (shape {tuple(pixel_values.shape)}).")
    if channels != num_channels:
        hint = ""
        if pixel_values.shape[1] == num_channels:
            hint = " It looks like (batch, channels, frames, height, width): use pixel_values.permute(0, 2, 1, 3, 4)."
        elif pixel_values.shape[-1] == num_channels:
            hint = " It looks channels-last: use pixel_values.permute(0, 1, 4, 2, 3)."
        raise ValueError(f"`pixel_values` must have {num_channels} channels in dim 2 {layout}, got shape "
                         f"{tuple(pixel_values.shape)}.{hint}")
    if height < min_size or width < min_size:
        raise ValueError(f"`pixel_values` frames must be at least {min_size}x{min_size} pixels, got {height}x{width}.")
    if not pixel_values.is_floating_point():
        raise TypeError(f"`pixel_values` must be a floating-point tensor (use the video processor), got "
                        f"{pixel_values.dtype}.")


# --------------------------------------------------------------------------------------------------- base model
@auto_docstring(custom_intro="Base class of the DART video models: the DART weight initialisation plus the temporal "
                "position table.")
class DartVideoPreTrainedModel(DartPreTrainedModel):

    config_class = DartVideoConfig
    config: DartVideoConfig
    input_modalities = ("video",)
    main_input_name = "pixel_values"
    _no_split_modules = ["DartPatchProjection", "DartEmbeddings", "DartMotionEmbeddings", "DartMambaBlock"]
    # the residual-stream recorders of the Mamba stack (see `DartMambaEncoder`); no attention maps to record
    _can_record_outputs = {"hidden_states": DartPreTrainedModel._can_record_outputs["hidden_states"]}
    _remote_auto_map = {
        "AutoConfig": "configuration_dart.DartVideoConfig",
        "AutoModel": "modeling_video_dart.DartVideoMambaModel",
        "AutoModelForVideoClassification": "modeling_video_dart.DartVideoMambaForVideoClassification",
    }

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DartVideoMambaModel):
            init.zeros_(module.temporal_position_embeddings)  # as VideoMamba (zeros; learned from there)
        elif isinstance(module, DartMotionEmbeddings):
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
            init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)


# the arguments of both video models' `forward`, documented once
DART_VIDEO_CALL_ARGS = r"""
    pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
        Normalised frames (see [`DartVideoProcessor`]), the layout of Transformers' video models. The original
        VideoMamba takes `(batch, channels, frames, height, width)`: permute with `.permute(0, 2, 1, 3, 4)`.
        A frame count other than `config.num_frames` is allowed: the temporal position table is then linearly
        interpolated to it (as VideoMamba's loader does when fine-tuning with another frame count). The motion
        tokeniser needs at least 2 frames and frame sides divisible by `config.patch_size`.
    num_tokens (`int`, *optional*):
        Adaptive tokens per frame for this call (defaults to `config.num_tokens`); with the motion tokeniser, the
        budget of the whole clip.
    score_normalization (`str`, *optional*):
        `"image"` or `"batch"`; overrides `config.score_normalization` for this call (`"batch"` takes the
        statistics over all frames of all clips of the batch, or over the clips' mean frames with
        `video_score_pooling="clip"`).
"""


@auto_docstring(
    custom_intro="The bare DART VideoMamba model: adaptive tokens for every frame, temporal positions and a "
    "bidirectional Mamba stack. Frames are scored on their own (`config.video_score_pooling=\"frame\"`) or the clip "
    "once from its mean frame (`\"clip\"`), so that every frame uses the same token regions."
)
class DartVideoMambaModel(DartVideoPreTrainedModel):

    def __init__(self, config: DartVideoConfig):
        if getattr(config, "model_type", None) != "dart_video" or config.backbone != "videomamba":
            raise ValueError(f"DartVideoMambaModel needs a DartVideoConfig (backbone='videomamba'), got "
                             f"{type(config).__name__} with backbone={getattr(config, 'backbone', None)!r}.")
        config._validate_dart()
        super().__init__(config)
        # CODEPATH: dvideomamba_* checkpoints (convert_videomamba_original.py) take the motion tokeniser; converted
        # VideoMamba checkpoints and DART folders made with a per-frame scorer take the per-frame one
        self.embeddings = DartMotionEmbeddings(config) if config.motion_tokens else DartEmbeddings(config)
        self.temporal_position_embeddings = nn.Parameter(torch.zeros(1, config.num_frames, config.hidden_size))
        self.encoder = DartMambaEncoder(config)
        _mark_trunk(self)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    def embed_frames(
        self, pixel_values: torch.Tensor, num_tokens: int | None = None, score_normalization: str | None = None
    ) -> tuple[torch.Tensor, DartEmbeddingsOutput | DartMotionEmbeddingsOutput]:
        """Tokenise a clip batch.

        Args:
            pixel_values (`torch.Tensor` of shape `(batch, frames, channels, height, width)`).

        Returns:
            `(sequence, embeddings)`: the backbone input `(batch, 1 + frames * num_tokens, hidden_size)` and the
            per-frame [`DartEmbeddingsOutput`] (batch and frames flattened, frame-major within each clip); with the
            motion tokeniser `(batch, 1 + num_tokens, hidden_size)` and the clip's [`DartMotionEmbeddingsOutput`].
        """
        batch, frames = pixel_values.shape[:2]
        # CODEPATH: dvideomamba_* checkpoints tokenise the clip at once (motion); the others frame by frame
        if self.config.motion_tokens:
            temporal = interpolate_temporal_embeddings(self.temporal_position_embeddings, frames)
            emb = self.embeddings(pixel_values, temporal, num_tokens=num_tokens, score_normalization=score_normalization)
            return emb.embeddings, emb
        flat = pixel_values.reshape(batch * frames, *pixel_values.shape[2:])
        score_map = None
        # CODEPATH: the converted VideoMamba checkpoints score every frame ("frame"); "clip" is a DART option no
        # released checkpoint uses
        if self.config.video_score_pooling == "clip" and self.embeddings.scorer is not None:
            clip_scores = self.embeddings.compute_scores(pixel_values.mean(dim=1), score_normalization)  # (B, g, g)
            score_map = clip_scores.repeat_interleave(frames, dim=0)
        emb = self.embeddings(flat, num_tokens=num_tokens, score_map=score_map, score_normalization=score_normalization)
        hidden = emb.embeddings.shape[-1]
        tokens = emb.embeddings.view(batch, frames, -1, hidden)  # cls first in every frame (cls_token_position="head")
        cls = tokens[:, 0, :1]  # cls_token + position_embeddings[0]: identical for all frames
        temporal = interpolate_temporal_embeddings(self.temporal_position_embeddings, frames)
        patches = tokens[:, :, 1:] + temporal[:, :, None].to(tokens.dtype)  # (B, T, N, D)
        sequence = torch.cat([cls, patches.reshape(batch, -1, hidden)], dim=1)
        return sequence, emb

    @capture_outputs(tie_last_hidden_states=False)  # the last hidden state is the one before the final norm
    @auto_docstring(custom_args=DART_VIDEO_CALL_ARGS)
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        num_tokens: int | None = None,
        score_normalization: str | None = None,
        **kwargs,
    ) -> DartVideoModelOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values` of shape (batch, frames, channels, height, width).")
        kwargs.pop("output_attentions", None)  # Mamba has no attention maps
        if score_normalization is not None and score_normalization not in ("image", "batch"):
            raise ValueError(f"`score_normalization` must be 'image' or 'batch', got {score_normalization!r}.")
        check_video_pixel_values(pixel_values, self.config.num_channels, self.config.patch_size)
        pixel_values = pixel_values.to(self.embeddings.projection.weight.dtype)
        batch, frames = pixel_values.shape[:2]

        sequence, emb = self.embed_frames(pixel_values, num_tokens, score_normalization)
        sequence = self.encoder(sequence, **kwargs).last_hidden_state
        # CODEPATH: dvideomamba_* checkpoints (motion tokeniser) have one geometry for the clip; the others per frame
        if self.config.motion_tokens:
            return DartVideoModelOutput(
                last_hidden_state=sequence,
                pooler_output=sequence[:, 0],
                regions=emb.regions,
                score_map=emb.score_map,
                token_edges=emb.token_edges,
                row_edges=emb.row_edges,
                token_frames=emb.token_frames,
            )

        def per_clip(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.reshape(batch, frames, *tensor.shape[1:])

        return DartVideoModelOutput(
            last_hidden_state=sequence,
            pooler_output=sequence[:, 0],
            regions=per_clip(emb.regions),
            score_map=per_clip(emb.score_map),
            token_edges=per_clip(emb.token_edges),
            row_edges=per_clip(emb.row_edges),
        )


@auto_docstring(custom_intro="DART VideoMamba with a linear classifier on the final cls token.")
class DartVideoMambaForVideoClassification(DartVideoPreTrainedModel):

    def __init__(self, config: DartVideoConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dart = DartVideoMambaModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    @auto_docstring(custom_args=DART_VIDEO_CALL_ARGS + DART_LABELS_ARG)
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        num_tokens: int | None = None,
        score_normalization: str | None = None,
        **kwargs,
    ) -> DartVideoClassifierOutput | tuple:
        outputs = self.dart(
            pixel_values, num_tokens=num_tokens, score_normalization=score_normalization, return_dict=True, **kwargs
        )
        return classify(self, outputs, labels, DartVideoClassifierOutput)


__all__ = [
    "DartVideoPreTrainedModel",
    "DartVideoMambaModel",
    "DartVideoMambaForVideoClassification",
    "DartVideoModelOutput",
    "DartVideoClassifierOutput",
    "interpolate_temporal_embeddings",
]
