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
"""PyTorch RMT (VisRetNet, "RMT: Retentive Networks Meet Vision Transformers", CVPR 2024): a hierarchical vision model
whose blocks mix tokens with retention, a softmax attention whose logits carry a Manhattan-distance decay.

Layout: the stem and the stage outputs are channels-first `(batch, channels, height, width)`, as Transformers' convolutional
models return them; inside a stage the blocks work channels-last `(batch, height, width, channels)`, as the original
does. The decay masks and rotary tables are computed from the config for the feature map at hand (no stored buffers).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithNoAttention,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)
from transformers.utils import auto_docstring
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_rmt import RmtConfig
from .layers_dart import DartDropPath, check_classification_labels


# ------------------------------------------------------------------------------------- relative-position tables
def _check_positive_number(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")


def rmt_rotary_angles(key_dim: int, rope_theta: float = 10000.0, device: torch.device | None = None) -> torch.Tensor:
    """The rotary frequencies of one retention head, float32 of shape `(key_dim,)`: `rope_theta**-t` for `key_dim / 2`
    values of `t` evenly spaced in [0, 1], each repeated twice in a row (one value per rotated channel pair). This is
    the original's `Relpos.angle` buffer."""
    if isinstance(key_dim, bool) or not isinstance(key_dim, int) or key_dim < 2 or key_dim % 2:
        raise ValueError(f"`key_dim` must be a positive even integer (the rotary embedding rotates pairs of channels), "
                         f"got {key_dim!r}.")
    _check_positive_number(rope_theta, "rope_theta")
    exponents = torch.linspace(0, 1, key_dim // 2, dtype=torch.float32, device=device)
    return (1.0 / (rope_theta**exponents)).repeat_interleave(2)


def rmt_decay_rates(num_heads: int, init_value: float, heads_range: float,
                    device: torch.device | None = None) -> torch.Tensor:
    """The log decay of each head, float32 of shape `(num_heads,)`: `log(1 - 2**(-init_value - heads_range * h /
    num_heads))` for head `h` (all negative). This is the original's `Relpos.decay` buffer."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"`num_heads` must be a positive integer, got {num_heads!r}.")
    _check_positive_number(init_value, "init_value")
    _check_positive_number(heads_range, "heads_range")
    steps = torch.arange(num_heads, dtype=torch.float32, device=device)
    return torch.log(1 - 2 ** (-init_value - heads_range * steps / num_heads))


def rmt_relative_position_buffers(config: RmtConfig) -> dict[int, dict[str, torch.Tensor]]:
    """Per stage index, the `angle` and `decay` tensors that the original stores as `layers.{i}.Relpos.angle` /
    `.decay`, computed from `config` (see [`rmt_rotary_angles`], [`rmt_decay_rates`])."""
    return {
        stage: {
            "angle": rmt_rotary_angles(config.embed_dims[stage] // config.num_heads[stage], config.rope_theta),
            "decay": rmt_decay_rates(config.num_heads[stage], config.init_values[stage], config.heads_ranges[stage]),
        }
        for stage in range(config.num_stages)
    }


class RmtRetentionPositions(nn.Module):
    """The relative-position tables that the blocks of one stage share, for a `height x width` feature map.

    Returns `(sin, cos, decay_masks)`: `sin` and `cos` of shape `(height, width, key_dim)`, the rotary phases of the
    raster index `r * width + c` (a 1-D rotary embedding in raster order); and the additive decay masks, the log decay
    of head `h` times a distance:
    - decomposed retention: `(mask_h, mask_w)` of shapes `(num_heads, 1, height, height)` and
      `(num_heads, 1, width, width)`, for the distance `|a - b|` between two rows / two columns;
    - whole-map retention: `(mask,)` of shape `(num_heads, height * width, height * width)`, for the Manhattan distance
      between two positions in raster order.
    Everything is computed in float32 from the config; nothing is stored.
    """

    def __init__(self, config: RmtConfig, stage_index: int):
        super().__init__()
        self.num_heads = config.num_heads[stage_index]
        self.key_dim = config.embed_dims[stage_index] // self.num_heads
        self.init_value = config.init_values[stage_index]
        self.heads_range = config.heads_ranges[stage_index]
        self.rope_theta = config.rope_theta
        self.decomposed = config.chunkwise_recurrents[stage_index]

    def forward(self, height: int, width: int, device: torch.device):
        angle = rmt_rotary_angles(self.key_dim, self.rope_theta, device=device)
        decay = rmt_decay_rates(self.num_heads, self.init_value, self.heads_range, device=device)
        raster = torch.arange(height * width, dtype=torch.float32, device=device)
        phase = raster[:, None] * angle[None, :]
        sin = torch.sin(phase).reshape(height, width, self.key_dim)
        cos = torch.cos(phase).reshape(height, width, self.key_dim)
        if self.decomposed:
            masks = (_line_decay_mask(decay, height), _line_decay_mask(decay, width))
        else:
            rows = torch.arange(height, dtype=torch.float32, device=device).repeat_interleave(width)
            columns = torch.arange(width, dtype=torch.float32, device=device).repeat(height)
            distance = (rows[:, None] - rows[None, :]).abs() + (columns[:, None] - columns[None, :]).abs()
            masks = (distance * decay[:, None, None],)
        return sin, cos, masks


def _line_decay_mask(decay: torch.Tensor, length: int) -> torch.Tensor:
    """`decay[h] * |a - b|` for positions `a`, `b` on a line of `length`, shape `(num_heads, 1, length, length)`."""
    index = torch.arange(length, dtype=torch.float32, device=decay.device)
    distance = (index[:, None] - index[None, :]).abs()
    return (distance * decay[:, None, None]).unsqueeze(1)


# ------------------------------------------------------------------------------------------------------ retention
def _channels_last_conv(conv: nn.Conv2d, hidden_states: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D convolution to a channels-last `(batch, height, width, channels)` tensor."""
    return conv(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _rotate_pairs(hidden_states: torch.Tensor) -> torch.Tensor:
    """Rotate every channel pair `(x_2m, x_2m+1)` to `(-x_2m+1, x_2m)` along the last dimension."""
    even = hidden_states[..., 0::2]
    odd = hidden_states[..., 1::2]
    return torch.stack((-odd, even), dim=-1).flatten(-2)


def apply_rotary(hidden_states: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with interleaved pairs: `x * cos + rotate_pairs(x) * sin` (tables broadcast over the
    leading dimensions)."""
    return hidden_states * cos + _rotate_pairs(hidden_states) * sin


def decayed_softmax_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              decay_mask: torch.Tensor) -> torch.Tensor:
    """`softmax(query @ key^T + decay_mask) @ value` over the last two dimensions (the query, key and value share
    their leading dimensions; the mask broadcasts against them).

    The key must already carry the `1 / sqrt(key_dim)` scale. The softmax runs in float32. With `decay_mask =
    log(lambda) * distance`, the attention weights are the plain softmax weights multiplied by `lambda**distance` and
    renormalised.
    """
    # The products run on 3-D stacks (leading dimensions merged): inductor's attention-fusion pass matched the 5-D
    # products of the decomposed form to a 4-D pattern and failed to compile them (torch 2.13)
    lead, length = query.shape[:-2], key.shape[-2]
    scores = torch.bmm(query.reshape(-1, *query.shape[-2:]), key.reshape(-1, *key.shape[-2:]).transpose(-1, -2))
    scores = scores.view(*lead, query.shape[-2], length) + decay_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    output = torch.bmm(weights.reshape(-1, query.shape[-2], length), value.reshape(-1, length, value.shape[-1]))
    return output.view(*lead, query.shape[-2], value.shape[-1])


class RmtRetention(nn.Module):
    """Multi-head retention of an RMT block (the original's `VisionRetentionChunk` / `VisionRetentionAll`) on a
    channels-last map `(batch, height, width, channels)`; returns the same shape.

    What it computes: the query and the key (the key scaled by `key_dim**-0.5`) get the rotary embedding; then, per
    head, **softmax attention with an additive decay mask** -- `softmax(q k^T + log(lambda_h) * distance) v`, with
    `lambda_h = 1 - 2**(-init_value - heads_range * h / num_heads)` --, which is the softmax attention weights damped
    by `lambda_h**distance` and renormalised. It is not RetNet's softmax-free retention, and nothing is recurrent
    despite the original flag's name (`chunkwise_recurrent`). Two forms, one interface (`decay_masks` from
    [`RmtRetentionPositions`]):
    - decomposed (`chunkwise_recurrents[i] = True`): attention along each row (over the width, `|column difference|`),
      then along each column (over the height, `|row difference|`) on the row pass's output, reusing the same query
      and key;
    - whole map (`False`): attention over all `height * width` positions with the Manhattan distance.
    Then the heads are merged, a depthwise 5x5 convolution of the values (`lepe`, a local position term) is added and
    `out_proj` is applied. Computed eagerly (matmul and softmax); no attention backend is involved.
    """

    def __init__(self, config: RmtConfig, stage_index: int):
        super().__init__()
        dim = config.embed_dims[stage_index]
        self.num_heads = config.num_heads[stage_index]
        self.key_dim = dim // self.num_heads
        self.scaling = self.key_dim**-0.5
        # CODEPATH: decomposed (row then column) retention in the chunkwise stages of every released variant (the first
        # two of RMT-T3, the first three of RMT-S/M2/L6 and DARMT-L6); whole-map retention in the others
        self.decomposed = config.chunkwise_recurrents[stage_index]
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, kernel_size=5, padding=2, groups=dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split_heads(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = hidden_states.shape
        return hidden_states.view(batch, height, width, self.num_heads, self.key_dim).permute(0, 3, 1, 2, 4)

    def forward(self, hidden_states: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor,
                decay_masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        batch, height, width, channels = hidden_states.shape
        value = self.v_proj(hidden_states)
        local = _channels_last_conv(self.lepe, value)
        query = apply_rotary(self._split_heads(self.q_proj(hidden_states)), sin, cos)  # (batch, heads, H, W, key_dim)
        key = apply_rotary(self._split_heads(self.k_proj(hidden_states) * self.scaling), sin, cos)
        value = self._split_heads(value)
        if self.decomposed:
            mask_h, mask_w = decay_masks
            rows = decayed_softmax_attention(query, key, value, mask_w)  # along W within each row
            output = decayed_softmax_attention(query.transpose(2, 3), key.transpose(2, 3), rows.transpose(2, 3),
                                               mask_h)  # along H within each column: (batch, heads, W, H, key_dim)
            output = output.permute(0, 3, 2, 1, 4)
        else:
            (mask,) = decay_masks
            output = decayed_softmax_attention(query.flatten(2, 3), key.flatten(2, 3), value.flatten(2, 3), mask)
            output = output.transpose(1, 2)  # (batch, H * W, heads, key_dim)
        output = output.reshape(batch, height, width, channels) + local
        return self.out_proj(output)


class RmtFeedForward(nn.Module):
    """`fc2(a + dwconv(a))` with `a = act(fc1(x))` on a channels-last map; `dwconv` is a depthwise 3x3 convolution."""

    def __init__(self, config: RmtConfig, stage_index: int):
        super().__init__()
        dim = config.embed_dims[stage_index]
        width = config.ffn_dims()[stage_index]
        self.fc1 = nn.Linear(dim, width)
        self.activation = ACT2FN[config.hidden_act]
        self.dwconv = nn.Conv2d(width, width, kernel_size=3, padding=1, groups=width)
        self.fc2 = nn.Linear(width, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.fc1(hidden_states))
        hidden_states = hidden_states + _channels_last_conv(self.dwconv, hidden_states)
        return self.fc2(hidden_states)


class RmtLayer(GradientCheckpointingLayer):
    """One retention block (the original's `RetBlock`) on a channels-last map:
    `x + dwconv3x3(x)`, then `x + s1 * retention(norm(x))`, then `x + s2 * ffn(norm(x))`, where `s1`, `s2` are the
    per-channel layer scales of the stages that have them (else 1) and each branch goes through stochastic depth."""

    def __init__(self, config: RmtConfig, stage_index: int, drop_path: float = 0.0):
        super().__init__()
        dim = config.embed_dims[stage_index]
        self.position_conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.retention_layer_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.retention = RmtRetention(config, stage_index)
        self.final_layer_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.ffn = RmtFeedForward(config, stage_index)
        self.drop_path = DartDropPath(drop_path)
        # CODEPATH: layer scales in the last two stages of RMT-M2, RMT-L6 and DARMT-L6; none in RMT-T3 and RMT-S
        if config.layerscales[stage_index]:
            self.retention_layer_scale = nn.Parameter(torch.empty(dim))
            self.ffn_layer_scale = nn.Parameter(torch.empty(dim))
        else:
            self.retention_layer_scale = None
            self.ffn_layer_scale = None

    def forward(self, hidden_states: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor,
                decay_masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        hidden_states = hidden_states + _channels_last_conv(self.position_conv, hidden_states)
        branch = self.retention(self.retention_layer_norm(hidden_states), sin, cos, decay_masks)
        if self.retention_layer_scale is not None:
            branch = self.retention_layer_scale * branch
        hidden_states = hidden_states + self.drop_path(branch)
        branch = self.ffn(self.final_layer_norm(hidden_states))
        if self.ffn_layer_scale is not None:
            branch = self.ffn_layer_scale * branch
        return hidden_states + self.drop_path(branch)


class RmtPatchMerging(nn.Module):
    """Stride-2 downsampling between stages (channels-first in and out): a 3x3 convolution from the previous stage's
    width to this stage's, then BatchNorm."""

    def __init__(self, config: RmtConfig, stage_index: int):
        super().__init__()
        self.reduction = nn.Conv2d(config.embed_dims[stage_index - 1], config.embed_dims[stage_index], kernel_size=3,
                                   stride=2, padding=1)
        self.norm = nn.BatchNorm2d(config.embed_dims[stage_index], eps=config.batch_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(hidden_states))


class RmtStage(nn.Module):
    """One stage, channels-first in and out: the patch merging (every stage but the first; the original attaches it to
    the end of the previous stage), then the retention blocks, which share one set of position tables."""

    def __init__(self, config: RmtConfig, stage_index: int, drop_paths: list[float]):
        super().__init__()
        self.downsample = RmtPatchMerging(config, stage_index) if stage_index > 0 else None
        self.positions = RmtRetentionPositions(config, stage_index)
        self.layers = nn.ModuleList([RmtLayer(config, stage_index, rate) for rate in drop_paths])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        hidden_states = hidden_states.permute(0, 2, 3, 1)
        _, height, width, _ = hidden_states.shape
        sin, cos, decay_masks = self.positions(height, width, hidden_states.device)
        dtype = hidden_states.dtype
        sin, cos = sin.to(dtype), cos.to(dtype)
        decay_masks = tuple(mask.to(dtype) for mask in decay_masks)
        for layer in self.layers:
            hidden_states = layer(hidden_states, sin, cos, decay_masks)
        return hidden_states.permute(0, 3, 1, 2)


class RmtEmbeddings(nn.Module):
    """The stem (stride 4): four 3x3 convolutions (stride 2, 1, 2, 1; `embed_dims[0] // 2`, then `embed_dims[0]`
    channels), each followed by BatchNorm, the first three also by the activation. `(batch, num_channels, H, W)` ->
    `(batch, embed_dims[0], ceil(H / 4), ceil(W / 4))`."""

    def __init__(self, config: RmtConfig):
        super().__init__()
        half = config.embed_dims[0] // 2
        full = config.embed_dims[0]
        eps = config.batch_norm_eps
        self.conv1 = nn.Conv2d(config.num_channels, half, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(half, eps=eps)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.BatchNorm2d(half, eps=eps)
        self.conv3 = nn.Conv2d(half, full, kernel_size=3, stride=2, padding=1)
        self.norm3 = nn.BatchNorm2d(full, eps=eps)
        self.conv4 = nn.Conv2d(full, full, kernel_size=3, stride=1, padding=1)
        self.norm4 = nn.BatchNorm2d(full, eps=eps)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.norm1(self.conv1(pixel_values)))
        hidden_states = self.activation(self.norm2(self.conv2(hidden_states)))
        hidden_states = self.activation(self.norm3(self.conv3(hidden_states)))
        return self.norm4(self.conv4(hidden_states))


class RmtFeatureProjection(nn.Module):
    """The original classifier's pre-head (`proj`, `norm`, swish, average pool): a per-position linear map of the last
    stage `(batch, embed_dims[-1], H, W)` to `projection` channels, BatchNorm, `x * sigmoid(x)`, then the mean over
    all positions -> `(batch, projection)`."""

    def __init__(self, config: RmtConfig):
        super().__init__()
        self.dense = nn.Linear(config.embed_dims[-1], config.projection)
        self.norm = nn.BatchNorm2d(config.projection, eps=config.batch_norm_eps)
        self.activation = nn.SiLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states.permute(0, 2, 3, 1))
        hidden_states = self.activation(self.norm(hidden_states.permute(0, 3, 1, 2)))
        return hidden_states.mean(dim=(2, 3))


def _drop_path_rates(config: RmtConfig) -> list[list[float]]:
    """Per stage, the stochastic-depth rate of each block: rising linearly from 0 to `drop_path_rate` over all blocks."""
    total = sum(config.depths)
    rates = [config.drop_path_rate * index / (total - 1) if total > 1 else 0.0 for index in range(total)]
    starts = [sum(config.depths[:stage]) for stage in range(config.num_stages)]
    return [rates[start:start + depth] for start, depth in zip(starts, config.depths)]


def _check_config(config) -> None:
    # by model type, not class: remote code loads the config class under another module than the model's import
    if getattr(config, "model_type", None) != RmtConfig.model_type or not hasattr(config, "validate_architecture"):
        raise TypeError(f"RMT models take an `RmtConfig`, got `config` of type {type(config).__name__}.")
    config.validate_architecture()
    if list(config.stage_names) != ["stem"] + [f"stage{i}" for i in range(1, config.num_stages + 1)]:
        raise ValueError(f"RmtConfig: `stage_names` {config.stage_names} do not match the {config.num_stages} stages "
                         "of `depths` (build a new config instead of changing `depths` after construction).")


def _check_pixel_values(pixel_values, num_channels: int) -> None:
    if pixel_values is None:
        raise ValueError("You have to specify `pixel_values` of shape (batch, channels, height, width).")
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        raise TypeError(f"`pixel_values` must be a floating-point torch.Tensor, got "
                        f"{getattr(pixel_values, 'dtype', type(pixel_values).__name__)}.")
    if pixel_values.dim() != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(f"`pixel_values` must have shape (batch, {num_channels}, height, width), got "
                         f"{tuple(pixel_values.shape)}.")
    if pixel_values.shape[2] < 1 or pixel_values.shape[3] < 1:
        raise ValueError(f"`pixel_values` images must be at least 1x1 pixels, got {pixel_values.shape[2]}x"
                         f"{pixel_values.shape[3]}.")
    # the value check branches on the data, which `torch.compile` / `torch.export` cannot trace: traced graphs keep
    # only the shape and dtype checks above
    if torch.compiler.is_compiling() or pixel_values.numel() == 0:
        return
    # one sum first (no copy of the batch); only an overflowing or non-finite sum looks at every pixel
    if not torch.isfinite(pixel_values.detach().sum()) and not torch.isfinite(pixel_values.detach()).all():
        raise ValueError("`pixel_values` contains NaN or infinite values.")


def _check_labels(labels, logits: torch.Tensor, config) -> tuple[torch.Tensor, str]:
    """[`check_classification_labels`], after refusing labels for a model without a classifier (`num_labels` 0)."""
    if config.num_labels < 1:
        raise ValueError("`labels` need a classifier, but `config.num_labels` is 0 (the model returns features).")
    return check_classification_labels(labels, logits, config)


# --------------------------------------------------------------------------------------------------- base model
@auto_docstring
class RmtPreTrainedModel(PreTrainedModel):
    config_class = RmtConfig
    config: RmtConfig
    base_model_prefix = "rmt"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["RmtLayer", "RmtPatchMerging"]
    # Auto classes recorded in a saved folder's `auto_map` besides the saving class's own, so that the folder loads
    # with `trust_remote_code=True` through any of them where this package is not installed.
    _remote_auto_map = {
        "AutoConfig": "configuration_rmt.RmtConfig",
        "AutoModel": "modeling_rmt.RmtModel",
        "AutoModelForImageClassification": "modeling_rmt.RmtForImageClassification",
        "AutoBackbone": "modeling_rmt.RmtBackbone",
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As `PreTrainedModel.save_pretrained`; a model registered for remote code also records the other RMT Auto
        classes in the folder's `auto_map`."""
        if self._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            for auto_class, reference in self._remote_auto_map.items():
                auto_map.setdefault(auto_class, reference)
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise every parameter and buffer of `module` as the original does: linear layers truncated normal
        (`initializer_range`) with zero bias, convolutions PyTorch's default (Kaiming uniform with `a = sqrt(5)`, bias
        uniform in `+-1 / sqrt(fan_in)`), norms at identity, layer scales at `layer_init_values`."""
        super()._init_weights(module)
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, RmtLayer) and module.retention_layer_scale is not None:
            init.constant_(module.retention_layer_scale, self.config.layer_init_values)
            init.constant_(module.ffn_layer_scale, self.config.layer_init_values)


RMT_ENCODER_ARGS = r"""
    hidden_states (`torch.FloatTensor` of shape `(batch_size, embed_dims[0], height, width)`):
        The stem's output, channels-first.
"""


class RmtEncoder(RmtPreTrainedModel):
    """The stages. Transformers' output recording collects the hidden states: the stem output (the input of the first
    stage), then each stage's output, all channels-first."""

    main_input_name = "hidden_states"
    _can_record_outputs = {"hidden_states": OutputRecorder(RmtStage, num_hidden_layers_key="num_stages")}

    def __init__(self, config: RmtConfig):
        _check_config(config)
        super().__init__(config)
        rates = _drop_path_rates(config)
        self.stages = nn.ModuleList([RmtStage(config, stage, rates[stage]) for stage in range(config.num_stages)])
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    @auto_docstring(custom_args=RMT_ENCODER_ARGS)
    def forward(self, hidden_states: torch.Tensor, **kwargs) -> BaseModelOutputWithNoAttention:
        for stage in self.stages:
            hidden_states = stage(hidden_states)
        return BaseModelOutputWithNoAttention(last_hidden_state=hidden_states)


@auto_docstring(custom_intro="The bare RMT model: the stem and the retention stages; the pooled output is the mean of "
                             "the last stage's feature map over all positions.")
class RmtModel(RmtPreTrainedModel):
    # loaded from a classification folder, the head is left out on purpose
    _keys_to_ignore_on_load_unexpected = [r"^feature_projection\.", r"^classifier\."]

    def __init__(self, config: RmtConfig):
        _check_config(config)
        super().__init__(config)
        self.embeddings = RmtEmbeddings(config)
        self.encoder = RmtEncoder(config)
        self.post_init()

    @can_return_tuple
    @auto_docstring
    def forward(self, pixel_values: torch.FloatTensor | None = None,
                **kwargs) -> BaseModelOutputWithPoolingAndNoAttention:
        _check_pixel_values(pixel_values, self.config.num_channels)
        pixel_values = pixel_values.to(self.embeddings.conv1.weight.dtype)  # float64 input into a float32 model
        encoder_outputs = self.encoder(self.embeddings(pixel_values), **kwargs)
        last_hidden_state = encoder_outputs.last_hidden_state
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=last_hidden_state.mean(dim=(-2, -1)),
            hidden_states=encoder_outputs.hidden_states,
        )


@auto_docstring(custom_intro="RMT with the original classification head: a per-position projection to "
                             "`config.projection` channels, BatchNorm, swish and average pooling, then a linear "
                             "classifier.")
class RmtForImageClassification(RmtPreTrainedModel):

    def __init__(self, config: RmtConfig):
        _check_config(config)
        super().__init__(config)
        self.num_labels = config.num_labels
        self.rmt = RmtModel(config)
        self.feature_projection = RmtFeatureProjection(config)
        self.classifier = nn.Linear(config.projection, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    @auto_docstring
    def forward(self, pixel_values: torch.FloatTensor | None = None, labels: torch.LongTensor | None = None,
                **kwargs) -> ImageClassifierOutputWithNoAttention:
        outputs = self.rmt(pixel_values, **kwargs)
        logits = self.classifier(self.feature_projection(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            labels, problem_type = _check_labels(labels, logits, self.config)
            self.config.problem_type = problem_type  # stored only once the labels passed
            loss = self.loss_function(labels=labels.to(logits.device), pooled_logits=logits, config=self.config)
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


@auto_docstring(custom_intro="RMT as a backbone for dense tasks (e.g. [`UperNetForSemanticSegmentation`]): the feature "
                             "maps of the stages named in `config.out_features`, channels-first `(batch, "
                             "embed_dims[i], H / 2**(i + 2), W / 2**(i + 2))`, without extra norms.")
class RmtBackbone(BackboneMixin, RmtPreTrainedModel):
    has_attentions = False
    # loaded from a classification folder, the head is left out on purpose
    _keys_to_ignore_on_load_unexpected = [r"^feature_projection\.", r"^classifier\."]

    def __init__(self, config: RmtConfig):
        _check_config(config)
        super().__init__(config)
        self.embeddings = RmtEmbeddings(config)
        self.encoder = RmtEncoder(config)
        self.num_features = [config.embed_dims[0]] + list(config.embed_dims)
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    @auto_docstring
    def forward(self, pixel_values: torch.FloatTensor | None = None, **kwargs) -> BackboneOutput:
        _check_pixel_values(pixel_values, self.config.num_channels)
        pixel_values = pixel_values.to(self.embeddings.conv1.weight.dtype)
        hidden_states = self.encoder(self.embeddings(pixel_values), **kwargs).hidden_states
        feature_maps = tuple(
            state for name, state in zip(self.stage_names, hidden_states) if name in self.out_features
        )
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states)


__all__ = [
    "RmtPreTrainedModel",
    "RmtModel",
    "RmtForImageClassification",
    "RmtBackbone",
    "rmt_decay_rates",
    "rmt_rotary_angles",
    "rmt_relative_position_buffers",
]
