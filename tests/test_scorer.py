"""The scorer's CPU fast paths (BatchNorm folding, fused oneDNN convolution + activation, chunked batches) against
the plain layer-by-layer trunk."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeling_dart import cpu_tuning_dart, trunks_dart
from modeling_dart.scorer_dart import DartScorer
from modeling_dart.trunks_dart import ConvBnAct
from tests.conftest import estimate_batchnorm_statistics, tiny_config

TRUNKS = ["mobilenet_v3_small", "mobilenet_v3_large"]


def scorer_with_statistics(trunk: str, freeze: bool = True) -> DartScorer:
    """A random scorer whose BatchNorm statistics are estimated on a few images, so activations are O(1) rather than
    vanishing through the random trunk (errors would hide below float32 resolution otherwise)."""
    torch.manual_seed(0)
    scorer = DartScorer(tiny_config(scorer_trunk=trunk, freeze_scorer_trunk=freeze))
    for module in scorer.features.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    estimate_batchnorm_statistics(scorer.features, torch.randn(6, 3, 96, 96, generator=torch.Generator().manual_seed(1)))
    return scorer.eval()


def plain_features(scorer: DartScorer, pixels: torch.Tensor) -> torch.Tensor:
    """The trunk as plain modules: conv -> BatchNorm (running statistics) -> activation, contiguous layout, one batch,
    with gradients enabled so that the squeeze-excite and residual steps take their out-of-place path."""
    original = ConvBnAct.forward
    ConvBnAct.forward = nn.Sequential.forward
    try:
        with torch.enable_grad():
            return scorer.features(pixels.contiguous()).detach()
    finally:
        ConvBnAct.forward = original


def pixels(batch=3, height=96, width=128, seed=2):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("trunk", TRUNKS)
def test_fast_trunk_matches_plain_layers(trunk):
    scorer = scorer_with_statistics(trunk)
    x = pixels()
    expected = plain_features(scorer, x)
    assert expected.abs().max() > 0.1  # the comparison is not between vanishing numbers
    with torch.no_grad():
        actual = scorer.extract_features(x)
    torch.testing.assert_close(actual, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("trunk", TRUNKS)
def test_fast_trunk_without_the_fused_op_matches_too(trunk, monkeypatch):
    scorer = scorer_with_statistics(trunk)
    x = pixels()
    expected = plain_features(scorer, x)
    monkeypatch.setattr(cpu_tuning_dart, "_MKLDNN_CONV_POINTWISE", None)
    with torch.no_grad():
        actual = scorer.extract_features(x)
    torch.testing.assert_close(actual, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)


def test_trainable_trunk_in_eval_mode_still_gets_gradients():
    """The fused oneDNN op has no backward: with gradients needed the folded F.conv2d path must run instead."""
    scorer = scorer_with_statistics("mobilenet_v3_small", freeze=False)
    x = pixels().requires_grad_(True)
    features = scorer.extract_features(x)
    expected = plain_features(scorer, x.detach())
    torch.testing.assert_close(features.detach(), expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)
    features.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    first_conv = scorer.features[0][0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_widest_activation_of_each_trunk():
    # MobileNetV3-Large expands 16 -> 64 channels at 1/2 resolution; -Small 24 -> 72 at 1/4 (float32 bytes per pixel)
    assert scorer_with_statistics("mobilenet_v3_large").widest_activation_bytes_per_pixel == 4 * 64 / 4
    assert scorer_with_statistics("mobilenet_v3_small").widest_activation_bytes_per_pixel == 4 * 72 / 16


@pytest.mark.parametrize("trunk", TRUNKS)
def test_chunked_batches_give_the_whole_batch_result(trunk, monkeypatch):
    scorer = scorer_with_statistics(trunk)
    x = pixels(batch=5)
    calls = []
    scorer.features.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        whole = scorer.extract_features(x)
        monkeypatch.setattr(cpu_tuning_dart, "TRUNK_CHUNK_BYTES", 2 * scorer.widest_activation_bytes_per_pixel * 96 * 128)
        chunked = scorer.extract_features(x)
    assert calls == [5, 2, 2, 1]
    torch.testing.assert_close(chunked, whole, atol=1e-5 * whole.abs().max().item(), rtol=1e-4)
    scorer.features.train()  # batch statistics: never chunked
    calls.clear()
    with torch.no_grad():
        scorer.extract_features(x)
    assert calls == [5]


@pytest.mark.parametrize("depth,stride,channels", [(None, 32, 96), (4, 8, 24), (7, 16, 40), (13, 32, 576)])
def test_scorer_trunk_depth_sets_the_feature_stride(depth, stride, channels):
    # MobileNetV3-Small: entries 0-3 end at stride 8 with 24 channels, 4-8 at 16 (40 channels after entry 4-6),
    # 9-11 at 32 (96), entry 12 is the last 1x1 conv (576); the original v1 head keeps 11 entries
    config = tiny_config(image_size=96, patch_size=8, score_grid_size=8, num_tokens=64, scorer_trunk_depth=depth)
    scorer = DartScorer(config).eval()
    with torch.no_grad():
        features = scorer.extract_features(pixels(batch=2, height=96, width=96))
        scores = scorer(pixels(batch=2, height=96, width=96))
    assert features.shape == (2, channels, 96 // stride, 96 // stride)
    assert scorer.head.fc1.in_features == channels
    assert scores.shape == (2, 8, 8)
    assert len(scorer.features) == (11 if depth is None else depth)


def test_scorer_trunk_depth_round_trips(tmp_path):
    from modeling_dart import DartConfig, DartForImageClassification

    config = tiny_config(scorer_trunk_depth=4)
    model = DartForImageClassification(config)
    model.save_pretrained(tmp_path)
    assert DartConfig.from_pretrained(tmp_path).scorer_trunk_depth == 4
    reloaded = DartForImageClassification.from_pretrained(tmp_path)
    assert len(reloaded.dart.embeddings.scorer.features) == 4
