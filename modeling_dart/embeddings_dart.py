"""DART embeddings: the scoring network (MobileNetV3 trunk + head) and the module that turns pixels into adaptive tokens.

The MobileNetV3 trunk is written here (no torchvision dependency); its `features.*` parameter names are the same as
torchvision's, so the weights of the original checkpoints map onto it one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_dart import DartConfig
from .partition_dart import (
    piecewise_linear_quantiles,
    row_resampling_weights,
    sample_regions,
    strip_resampling_weights,
    token_boxes,
)

STANDARDIZE_EPS = 1e-8
ROW_MARGINAL_EPS = 1e-8

# ----------------------------------------------------------------------------------------------- MobileNetV3 trunk
# One row per inverted-residual block: (kernel, expanded channels, output channels, squeeze-excite, activation, stride)
_SMALL_BLOCKS = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
)
_LARGE_BLOCKS = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
)
# (blocks, number of `features` entries kept for head v1 / v2) -- v1 stops before the last blocks, v2 keeps the last conv
TRUNK_SPECS = {
    "mobilenet_v3_small": (_SMALL_BLOCKS, {"v1": 11, "v2": 13}),
    "mobilenet_v3_large": (_LARGE_BLOCKS, {"v1": 15, "v2": 17}),
}
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _activation(name: str | None) -> nn.Module | None:
    return {"relu": nn.ReLU(inplace=True), "hardswish": nn.Hardswish(inplace=True), None: None}[name]


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation; entries `0`, `1`, `2` as in torchvision."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, activation="hardswish"):
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM),
        ]
        act = _activation(activation)
        if act is not None:
            layers.append(act)
        super().__init__(*layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        conv, norm = self[0], self[1]
        if norm.training or not norm.track_running_stats:
            hidden_states = norm(conv(hidden_states))
        else:  # inference: fold the BatchNorm into the convolution (one pass instead of two, same result)
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            weight, bias = conv.weight * scale.view(-1, 1, 1, 1), norm.bias - norm.running_mean * scale
            if hidden_states.device.type == "cpu" and hidden_states.is_contiguous(memory_format=torch.channels_last):
                # a channels-last input with a contiguous weight sends 1x1 convolutions down a ~3x slower CPU path
                weight = weight.contiguous(memory_format=torch.channels_last)
                if _can_fuse_on_cpu(hidden_states, weight):
                    return _fused_conv_activation(hidden_states, weight, bias, conv, self[2] if len(self) > 2 else None)
            hidden_states = F.conv2d(hidden_states, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return self[2](hidden_states) if len(self) > 2 else hidden_states


# oneDNN convolution with the activation fused in (what torch.compile emits on CPU): one pass over the output instead
# of two, and the fast oneDNN kernels for the 1x1 convolutions, which plain `F.conv2d` sends to a slower GEMM path
_MKLDNN_CONV_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
_FUSED_ACTIVATION_NAMES = {nn.ReLU: "relu", nn.Hardswish: "hardswish"}


def _can_fuse_on_cpu(hidden_states: torch.Tensor, weight: torch.Tensor) -> bool:
    """The fused oneDNN op has no autograd: only without gradients, in float32, where oneDNN is built in."""
    if _MKLDNN_CONV_POINTWISE is None or not torch.backends.mkldnn.is_available():
        return False
    if hidden_states.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    return not (torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad))


def _fused_conv_activation(hidden_states, weight, bias, conv: nn.Conv2d, activation: nn.Module | None):
    name = "none" if activation is None else _FUSED_ACTIVATION_NAMES[type(activation)]
    return _MKLDNN_CONV_POINTWISE(
        hidden_states, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, name,
        [], "",
    )


class SqueezeExcitation(nn.Module):
    """Channel attention: global mean -> fc1 (1x1) -> ReLU -> fc2 (1x1) -> hard sigmoid -> scale."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(hidden_states, 1)))))
        if not torch.is_grad_enabled():  # inference: scale the block's own intermediate in place (no new buffer)
            return hidden_states.mul_(scale)
        return hidden_states * scale


class InvertedResidual(nn.Module):
    """MobileNetV3 block: optional 1x1 expansion, depthwise conv, optional squeeze-excite, 1x1 projection."""

    def __init__(self, in_channels, kernel_size, expanded, out_channels, use_se, activation, stride):
        super().__init__()
        layers = []
        if expanded != in_channels:
            layers.append(ConvBnAct(in_channels, expanded, 1, activation=activation))
        layers.append(ConvBnAct(expanded, expanded, kernel_size, stride, groups=expanded, activation=activation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8)))
        layers.append(ConvBnAct(expanded, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.block(hidden_states)
        if not self.use_residual:
            return out
        if not torch.is_grad_enabled():  # inference: `out` is this block's fresh output, add in place
            return out.add_(hidden_states)
        return out + hidden_states


class MobileNetV3Trunk(nn.Module):
    """The first `num_features` entries of MobileNetV3's `features` (stride 32), named like torchvision's."""

    def __init__(self, variant: str, num_features: int, in_channels: int = 3):
        super().__init__()
        blocks, _ = TRUNK_SPECS[variant]
        features = [ConvBnAct(in_channels, 16, 3, stride=2, activation="hardswish")]
        channels, scale = 16, 2
        # float32 bytes per input pixel of the widest activation among the kept entries (an expansion before its
        # strided depthwise convolution): sizes the CPU chunks of `DartScorer`
        widest = 4 * 16 / scale**2
        for index, (kernel, expanded, out, use_se, act, stride) in enumerate(blocks, start=1):
            features.append(InvertedResidual(channels, kernel, expanded, out, use_se, act, stride))
            if index < num_features:
                widest = max(widest, 4 * expanded / scale**2)
            channels, scale = out, scale * stride
        self.widest_activation_bytes_per_pixel = widest
        features.append(ConvBnAct(channels, 6 * channels, 1, activation="hardswish"))
        self.features = nn.Sequential(*features[:num_features])
        self.out_channels = 6 * channels if num_features == len(features) else blocks[num_features - 2][2]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)


# ------------------------------------------------------------------------------------------------------- scorer
class DartScoreHead(nn.Module):
    """Two-layer MLP of the score head: `fc2(gelu(fc1(x)))`."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(hidden_states)))


def standardize(scores: torch.Tensor, mode: str) -> torch.Tensor:
    """`(s - mean) / (std + 1e-8)` with the unbiased std over each image (`"image"`) or the whole batch (`"batch"`).

    Args:
        scores (`torch.Tensor` of shape `(batch, ...)`).
    """
    if mode == "batch":
        return (scores - scores.mean()) / (scores.std() + STANDARDIZE_EPS)
    flat = scores.reshape(scores.shape[0], -1)
    mean = flat.mean(dim=1).view(-1, *([1] * (scores.dim() - 1)))
    std = flat.std(dim=1).view(-1, *([1] * (scores.dim() - 1)))
    return (scores - mean) / (std + STANDARDIZE_EPS)


_HALF_DTYPES = (torch.float16, torch.bfloat16)
_TRUNK_CHUNK_BYTES = 32 * 2**20  # the most bytes of the trunk's widest activation per CPU chunk of images


class DartScorer(nn.Module):
    """Predicts a strictly positive score map `(batch, grid, grid)` from the full-resolution input.

    Head v1: per-position MLP -> bilinear resize to the grid -> standardise -> `sigmoid(s) + 0.1`.
    Head v2: channel gates `sigmoid(MLP(spatial mean))`, gated channel sum -> resize -> standardise -> `sigmoid(2 s)`.
    """

    def __init__(self, config: DartConfig):
        super().__init__()
        blocks, keep = TRUNK_SPECS[config.scorer_trunk]
        self.version = config.scorer_head
        self.grid_size = config.score_grid_size
        self.freeze_trunk = config.freeze_scorer_trunk
        depth = keep[self.version] if config.scorer_trunk_depth is None else config.scorer_trunk_depth
        trunk = MobileNetV3Trunk(config.scorer_trunk, depth, config.num_channels)
        self.features = trunk.features
        self.widest_activation_bytes_per_pixel = trunk.widest_activation_bytes_per_pixel
        channels = trunk.out_channels
        out = 1 if self.version == "v1" else channels
        self.head = DartScoreHead(channels, config.scorer_hidden_size, out)
        if self.freeze_trunk:
            self.features.requires_grad_(False)

    def _apply(self, fn, recurse=True):
        """Casting to float16/bfloat16 leaves the scorer in float32 (devices still move).

        A half-precision rounding of the scorer's weights moves the scores by ~1%, which moves the token regions by
        whole pixels and so changes every token's content: a `model.to(torch.bfloat16)` would then no longer be a
        lower-precision copy of the float32 model but a different tokenizer. The scorer is a small part of the
        compute (the trunk is ~14% of DART-DeiT-S's multiply-adds), so it stays in float32, as
        `_keep_in_fp32_modules_strict` keeps it for `from_pretrained(dtype=...)`.
        """

        def keep_float32(tensor):
            cast = fn(tensor)
            if tensor.dtype == torch.float32 and cast.dtype in _HALF_DTYPES:
                return tensor.to(device=cast.device)
            return cast

        return super()._apply(keep_float32, recurse)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_trunk:  # a frozen trunk keeps its BatchNorm statistics
            self.features.eval()
        return self

    def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Trunk features `(batch, channels, height / 32, width / 32)`."""
        if pixel_values.device.type == "cpu" and not pixel_values.is_contiguous(memory_format=torch.channels_last):
            # depthwise convolutions are much faster channels-last on CPU; for 3 channels an explicit NHWC copy is
            # ~4x faster than `.contiguous(memory_format=torch.channels_last)` (15 -> 4 ms for 8 images at 448)
            pixel_values = pixel_values.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        if self.freeze_trunk:
            with torch.no_grad():
                return self._run_trunk(pixel_values)
        return self._run_trunk(pixel_values)

    def _run_trunk(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # On CPU an inference-mode trunk runs a few images at a time: for a whole batch its widest activations (64
        # channels at half the input resolution in MobileNetV3-Large: ~100 MB for 8 images at 448) are fresh
        # memory-mapped buffers on every call, and their page faults cost more than the convolutions (measured ~1.3x
        # faster in chunks of 2). Same result: with fixed BatchNorm statistics every image is processed on its own.
        if pixel_values.device.type != "cpu" or self.features.training:
            return self.features(pixel_values)
        image_bytes = self.widest_activation_bytes_per_pixel * pixel_values.shape[-2] * pixel_values.shape[-1]
        images_per_chunk = max(1, int(_TRUNK_CHUNK_BYTES // image_bytes))
        if pixel_values.shape[0] <= images_per_chunk:
            return self.features(pixel_values)
        return torch.cat([self.features(chunk) for chunk in pixel_values.split(images_per_chunk)])

    def forward(self, pixel_values: torch.Tensor, normalization: str = "image", features: torch.Tensor | None = None):
        if features is None:
            features = self.extract_features(pixel_values)
        if self.version == "v1":
            raw = self.head(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, 1, h, w)
        else:
            gates = torch.sigmoid(self.head(features.mean(dim=(2, 3))))  # (B, C)
            raw = torch.einsum("bchw,bc->bhw", features, gates).unsqueeze(1)
        if raw.shape[-2:] != (self.grid_size, self.grid_size):
            raw = F.interpolate(raw, size=(self.grid_size, self.grid_size), mode="bilinear", align_corners=False)
        raw = standardize(raw[:, 0].float(), normalization)  # float32: the 1e-8 guard vanishes in half precision
        if self.version == "v1":
            return torch.sigmoid(raw) + 0.1
        return torch.sigmoid(2.0 * raw)


# --------------------------------------------------------------------------------------------------- embeddings
@dataclass
class DartEmbeddingsOutput:
    """What the DART embeddings produce for a batch.

    Attributes:
        embeddings (`(batch, num_tokens + 1, hidden_size)`): tokens + positions with the cls token inserted at
            `cls_index`: the input of the first block.
        patch_tokens (`(batch, num_tokens, hidden_size)`): projected patches, before positions.
        position_embeddings (`(batch, num_tokens, hidden_size)`): resampled position embeddings of the patches.
        cls_index (`int`): index of the cls token in `embeddings`.
        score_map (`(batch, grid, grid)`): the scorer's output.
        pdf (`(batch, grid * grid)`): the score map normalised to sum 1.
        row_heights (`(batch, num_rows)`): token-row heights in base-grid pixels (they sum to `grid * patch_size`).
        resampled_pdf (`(batch, num_rows * grid)`): the pdf resampled into the token rows.
        token_edges (`(batch, num_tokens + 1)`): token boundaries along the concatenated row strip, in strip pixels
            (row `i` occupies `[i * width, (i + 1) * width)`).
        row_edges (`(batch, num_rows + 1)`): token-row boundaries in input pixels.
        regions (`(batch, num_tokens, 4)`): each token's source box `(x0, y0, x1, y1)` in input pixels (for a token
            that straddles two rows, its widest piece).
    """

    embeddings: torch.Tensor
    patch_tokens: torch.Tensor
    position_embeddings: torch.Tensor
    cls_index: int
    score_map: torch.Tensor
    pdf: torch.Tensor
    row_heights: torch.Tensor
    resampled_pdf: torch.Tensor
    token_edges: torch.Tensor
    row_edges: torch.Tensor
    regions: torch.Tensor


def check_pixel_values(pixel_values, num_channels: int, min_size: int, name: str = "pixel_values") -> None:
    """Raise a clear `TypeError`/`ValueError` unless `pixel_values` is a finite float tensor (B, C, H, W)."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (batch, {num_channels}, height, width), got "
                        f"{type(pixel_values).__name__}.")
    if pixel_values.dim() != 4:
        raise ValueError(f"`{name}` must have shape (batch, {num_channels}, height, width), got a "
                         f"{pixel_values.dim()}-D tensor of shape {tuple(pixel_values.shape)}.")
    batch, channels, height, width = pixel_values.shape
    if batch == 0:
        raise ValueError(f"`{name}` is an empty batch (shape {tuple(pixel_values.shape)}); give at least one image.")
    if channels != num_channels:
        raise ValueError(f"`{name}` must have {num_channels} channels in dim 1 (batch, {num_channels}, height, width), "
                         f"got shape {tuple(pixel_values.shape)}.")
    if height < min_size or width < min_size:
        raise ValueError(f"`{name}` images must be at least {min_size}x{min_size} pixels (one patch), got "
                         f"{height}x{width}.")
    if not pixel_values.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor (use the image processor), got {pixel_values.dtype}.")
    # The value check branches on the data, which `torch.compile` / `torch.export` / ONNX export cannot trace (a
    # data-dependent guard): traced graphs skip it and keep only the shape and dtype checks above.
    if torch.compiler.is_compiling():
        return
    if not torch.isfinite(pixel_values.sum()) and not torch.isfinite(pixel_values).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")


def check_num_tokens(num_tokens, maximum: int) -> int:
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int):
        raise TypeError(f"`num_tokens` must be an int in [1, {maximum}], got {num_tokens!r}.")
    if not 1 <= num_tokens <= maximum:
        raise ValueError(f"`num_tokens` must be in [1, {maximum}] (16 tokens per score-grid cell at most), "
                         f"got {num_tokens}.")
    return num_tokens


class DartEmbeddings(nn.Module):
    """Pixels -> adaptive tokens with resampled positions, cls token inserted.

    Holds the scorer, the patch projection `Conv2d(C, D, P, stride=P)`, the cls token and the base position table
    `(1, grid * grid + 1, D)` (the cls row at `cls_index`: 0 for `cls_token_position="head"`, `(grid*grid + 1) // 2`
    for `"middle"`, as in the original checkpoints).
    """

    def __init__(self, config: DartConfig):
        super().__init__()
        self.config = config
        self.grid_size = config.score_grid_size
        self.patch_size = config.patch_size
        self.num_cells = config.score_grid_size**2
        self.scorer = DartScorer(config) if config.scorer == "learned" else None
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_cells + 1, config.hidden_size))
        self.cls_row = 0 if config.cls_token_position == "head" else (self.num_cells + 1) // 2
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    # -- pieces
    def patch_position_table(self) -> torch.Tensor:
        """The base position table without the cls row: `(grid * grid, hidden_size)`."""
        table = self.position_embeddings[0]
        return torch.cat([table[: self.cls_row], table[self.cls_row + 1 :]], dim=0)

    def compute_scores(self, pixel_values: torch.Tensor, normalization: str | None = None) -> torch.Tensor:
        """Score map `(batch, grid, grid)` (constant 1 for the uniform scorer)."""
        normalization = normalization or self.config.score_normalization
        if self.scorer is None:
            return pixel_values.new_ones(pixel_values.shape[0], self.grid_size, self.grid_size)
        if not any(p.dtype in _HALF_DTYPES for p in self.scorer.parameters()) and pixel_values.dtype not in _HALF_DTYPES:
            return self.scorer(pixel_values, normalization)
        # the regions move by whole pixels when the scores move by a half-precision rounding step (and with them
        # every token's content), so scoring always runs in float32 (see `DartScorer._apply`); should the scorer's
        # weights have been made half precision by hand, they are upcast on the fly (gradients flow through the cast)
        upcast = {name: tensor.float() if tensor.is_floating_point() else tensor
                  for name, tensor in (*self.scorer.named_parameters(), *self.scorer.named_buffers())}
        return torch.func.functional_call(self.scorer, upcast, (pixel_values.float(), normalization))

    def _exact_grid_stride(self, height: int, width: int, num_tokens: int) -> tuple[int, int] | None:
        """Pixel strides of the standard grid when uniform tokens land exactly on it, else None."""
        base = self.grid_size * self.patch_size
        if num_tokens != self.num_cells or height % base or width % base:
            return None
        return height // base, width // base

    def forward(
        self,
        pixel_values: torch.Tensor,
        num_tokens: int | None = None,
        score_map: torch.Tensor | None = None,
        score_normalization: str | None = None,
    ) -> DartEmbeddingsOutput:
        """
        Args:
            pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`): any size >= one patch.
            num_tokens (`int`, *optional*): number of adaptive tokens (defaults to `config.num_tokens`).
            score_map (`torch.Tensor` of shape `(batch, grid, grid)`, *optional*): use these scores instead of the
                scorer's (e.g. one score map shared by all frames of a clip).
            score_normalization (`str`, *optional*): overrides `config.score_normalization`.
        """
        config = self.config
        check_pixel_values(pixel_values, config.num_channels, self.patch_size)
        num_tokens = check_num_tokens(config.num_tokens if num_tokens is None else num_tokens, config.max_num_tokens())
        batch, _, height, width = pixel_values.shape
        grid, patch = self.grid_size, self.patch_size
        num_rows = max(1, round(math.sqrt(num_tokens)))

        uniform = score_map is None
        if score_map is None:
            score_map = self.compute_scores(pixel_values, score_normalization)
        math_dtype = torch.promote_types(score_map.dtype, torch.float32)
        score = score_map.reshape(batch, self.num_cells).to(math_dtype)

        # density, row marginal, row heights (base-grid pixels)
        pdf = score / score.sum(dim=-1, keepdim=True)
        marginal = pdf.view(batch, grid, grid).sum(dim=-1)
        marginal = marginal / (marginal.sum(dim=-1, keepdim=True) + ROW_MARGINAL_EPS)
        row_cut = piecewise_linear_quantiles(marginal, num_rows)  # (B, R+1), cell units
        row_heights = (row_cut[:, 1:] - row_cut[:, :-1]) * patch  # sums to grid * patch

        # resample the pdf and the base position grid into the token rows
        row_weights = row_resampling_weights(row_heights, float(patch), grid)  # (B, R, grid)
        resampled_pdf = torch.bmm(row_weights, pdf.view(batch, grid, grid)).reshape(batch, num_rows * grid)
        resampled_pdf = resampled_pdf / resampled_pdf.sum(dim=-1, keepdim=True)
        strip_cells = num_rows * grid
        strip_cut = piecewise_linear_quantiles(resampled_pdf, num_tokens)  # (B, N+1), cell units

        # pixel geometry: rows in input pixels, token edges along the strip of rows `width` pixels wide
        scale_y = height / (grid * patch)
        row_edges = torch.cat([row_heights.new_zeros(batch, 1), row_heights.cumsum(dim=-1)], dim=1) * scale_y
        token_edges = strip_cut * (width * num_rows / strip_cells)

        table = self.patch_position_table()
        stride = self._exact_grid_stride(height, width, num_tokens) if self.scorer is None and uniform else None
        if stride is not None:
            # constant scores on a multiple of the base grid: every sample point is an integer pixel, so take the
            # exact standard patch grid instead of interpolating (bit-identical to a plain ViT patch embedding)
            positions = table.unsqueeze(0).expand(batch, -1, -1)
            patches = pixel_values[:, :, :: stride[0], :: stride[1]]
        else:
            hidden = table.shape[-1]
            rows_table = torch.matmul(row_weights.to(table.dtype), table.view(grid, grid * hidden))
            rows_table = rows_table.view(batch, strip_cells, hidden)
            strip_weights = strip_resampling_weights(strip_cut, strip_cells).to(table.dtype)  # (B, N, L)
            positions = torch.bmm(strip_weights, rows_table)
            patches = sample_regions(
                pixel_values, row_edges[:, :-1], row_heights * scale_y, token_edges, patch
            )  # (B, C, P, N * P)
        tokens = self.projection(patches.to(self.projection.weight.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)

        cls_index = 0 if config.cls_token_position == "head" else num_tokens // 2
        cls = (self.cls_token + self.position_embeddings[:, self.cls_row : self.cls_row + 1]).expand(batch, -1, -1)
        sequence = tokens + positions.to(tokens.dtype)
        embeddings = torch.cat([sequence[:, :cls_index], cls.to(tokens.dtype), sequence[:, cls_index:]], dim=1)
        embeddings = self.dropout(embeddings)
        regions = token_boxes(row_edges.detach(), token_edges.detach(), width)
        return DartEmbeddingsOutput(
            embeddings=embeddings,
            patch_tokens=tokens,
            position_embeddings=positions,
            cls_index=cls_index,
            score_map=score_map,
            pdf=pdf,
            row_heights=row_heights,
            resampled_pdf=resampled_pdf,
            token_edges=token_edges,
            row_edges=row_edges,
            regions=regions,
        )
