"""Issue #23: the `"mil"` scorer head. A gated-attention multiple-instance classifier on the scorer trunk's cells whose
attention, moved onto the score grid, is the score map (detached); the image classifier trains it with its own
classification loss on the labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling_dart import DartConfig, DartForImageClassification, DartModel
from modeling_dart.self_distillation_dart import MilEvidenceHead, attention_scores, pretrain_scorer_on_evidence
from tests.conftest import tiny_config

# efficientnet_lite0 cut at depth 5: 40 channels on an 8x8 map (stride 8) for 64-pixel inputs, onto an 8x8 grid
MIL = {"scorer_trunk": "efficientnet_lite0", "scorer_head": "mil", "scorer_trunk_depth": 5, "score_grid_size": 8}


def _model(**overrides) -> DartForImageClassification:
    torch.manual_seed(0)
    return DartForImageClassification(tiny_config(**{**MIL, **overrides}))


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 64, 64, generator=generator), torch.tensor([0, 4, 2])


def test_attention_scores_on_a_hand_made_case():
    # a 2x2 attention onto a 4x4 grid: every cell splits into four sub-cells of a quarter of its mass
    attention = torch.tensor([[[0.5, 0.3], [0.2, 0.0]]])
    scores = attention_scores(attention, 4, max_ratio=10.0)
    expected = torch.tensor([[0.125, 0.125, 0.075, 0.075], [0.125, 0.125, 0.075, 0.075],
                             [0.05, 0.05, 0.0125, 0.0125], [0.05, 0.05, 0.0125, 0.0125]])
    assert torch.allclose(scores[0], expected)  # the empty cell is floored at 0.125 / 10
    # power 0.5: square roots of the sub-cell masses, the same floor relative to the new peak
    rooted = attention_scores(attention, 4, max_ratio=4.0, power=0.5)
    peak = 0.125 ** 0.5
    assert torch.allclose(rooted[0, 0, 0], torch.tensor(peak))
    assert torch.allclose(rooted[0, 0, 2], torch.tensor(0.075 ** 0.5))
    assert torch.allclose(rooted[0, 3, 3], torch.tensor(peak / 4.0))
    # spread 3: each cell averages the 3x3 window of cells around it that lies inside the grid, before the power
    one = torch.zeros(1, 2, 2)
    one[0, 0, 0] = 1.0  # onto 4x4: a quarter in each of the four top-left cells
    spread = attention_scores(one, 4, max_ratio=100.0, spread=3)[0]
    assert torch.allclose(spread[0, 0], torch.tensor(1.0 / 4))  # 4 cells in its window, all four holding mass
    assert torch.allclose(spread[0, 1], torch.tensor(1.0 / 6)) and torch.allclose(spread[1, 1], torch.tensor(1.0 / 9))
    assert torch.allclose(spread[0, 2], torch.tensor(0.5 / 6)) and torch.allclose(spread[2, 2], torch.tensor(0.25 / 9))
    assert torch.allclose(spread[3, 3], torch.tensor(0.25 / 100))  # no mass in its window: the floor
    for bad in ({"power": 0.0}, {"power": True}, {"max_ratio": 1.0}, {"max_ratio": float("inf")}, {"spread": 2},
                {"spread": 0}, {"spread": 3.0}):
        with pytest.raises(ValueError, match="power|max_ratio|spread"):
            attention_scores(attention, 4, **{"max_ratio": 10.0, **bad})


def test_the_score_map_is_the_heads_attention_on_the_grid_detached():
    model = _model(scorer_attention_power=0.5).eval()
    scorer = model.dart.embeddings.scorer
    assert isinstance(scorer.head, MilEvidenceHead)
    assert scorer.head.embed.in_features == 40 and scorer.head.embed.out_features == 128
    assert scorer.head.classifier.out_features == 5
    pixels, _ = _inputs()
    out = model(pixels)
    with torch.no_grad():
        _, attention = scorer.head(scorer.extract_features(pixels))  # (3, 8, 8): the grid's own resolution
    powered = attention ** 0.5
    expected = torch.maximum(powered, powered.amax((-2, -1), keepdim=True) / 1e4)
    assert torch.allclose(out.score_map, expected, atol=1e-7)
    assert not out.score_map.requires_grad
    # scorer_attention_spread=3: the 3x3 mean of the attention (the grid is the feature map here), then the power
    model.config.scorer_attention_spread = 3
    spread_model = DartForImageClassification(model.config).eval()
    spread_model.load_state_dict(model.state_dict())
    padded = F.pad(attention, (1, 1, 1, 1))
    counts = F.pad(torch.ones_like(attention), (1, 1, 1, 1))
    window_sum = sum(padded[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3))
    window_count = sum(counts[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3))
    powered = (window_sum / window_count) ** 0.5
    expected = torch.maximum(powered, powered.amax((-2, -1), keepdim=True) / 1e4)
    with torch.no_grad():
        assert torch.allclose(spread_model(pixels).score_map, expected, atol=1e-7)


def test_training_adds_the_heads_own_loss_and_the_backbone_loss_does_not_reach_the_head():
    model = _model().train()
    pixels, labels = _inputs()
    out = model(pixels, labels=labels)
    scorer = model.dart.embeddings.scorer
    with torch.no_grad():
        head_logits, _ = scorer.head(scorer.extract_features(pixels))
    expected_head_loss = F.cross_entropy(head_logits, labels)
    assert torch.allclose(out.evidence_loss, expected_head_loss, atol=1e-6)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels) + expected_head_loss, atol=1e-6)
    # the backbone's loss alone: no gradient reaches the head (the placement is detached) nor the frozen trunk
    F.cross_entropy(out.logits, labels).backward(retain_graph=True)
    assert all(p.grad is None for p in scorer.head.parameters())
    out.evidence_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in scorer.head.parameters())
    assert all(p.grad is None for p in scorer.features.parameters())
    # evaluation: no head loss, the same logits with or without labels
    model.eval()
    with torch.no_grad():
        assert model(pixels, labels=labels).evidence_loss is None
        assert torch.equal(model(pixels, labels=labels).logits, model(pixels).logits)


def test_batch_independence_and_the_bare_model_places_the_same_tokens(tmp_path):
    model = _model().eval()
    pixels, _ = _inputs()
    with torch.no_grad():
        whole = model(pixels)
        alone = [model(pixels[i : i + 1]) for i in range(3)]
    assert torch.allclose(whole.logits, torch.cat([o.logits for o in alone]), atol=1e-5)
    assert torch.allclose(whole.score_map, torch.cat([o.score_map for o in alone]), atol=1e-7)
    model.save_pretrained(tmp_path)
    bare = DartModel.from_pretrained(tmp_path).eval()
    reloaded = DartForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(bare(pixels).score_map, whole.score_map)
        assert torch.equal(reloaded(pixels).logits, whole.logits)


def test_defaults_and_refusals():
    config = DartConfig(scorer_trunk="efficientnet_lite0", scorer_head="mil", image_size=160, score_grid_size=20)
    # the deepest Lite0 cut at output stride 16: 12 entries, 112 channels; a 128-wide cell embedding
    assert config.resolved_scorer_trunk_depth() == 12 and config.scorer_hidden_size == 128
    assert config.scorer_attention_power == 1.0
    with pytest.raises(ValueError, match="scorer_evidence_weight.*mil"):
        DartForImageClassification(tiny_config(**MIL, scorer_evidence_weight=1.0))
    with pytest.raises(ValueError, match="num_labels"):
        DartModel(tiny_config(**MIL, num_labels=0))
    with pytest.raises(ValueError, match="scorer_attention_power"):
        tiny_config(**MIL).scorer_attention_power = 0.0
    with pytest.raises(ValueError, match="scorer_attention_power"):
        DartModel(tiny_config(**MIL, scorer_attention_power=-1.0))
    for spread in (2, 0, 1.0, True):
        with pytest.raises(ValueError, match="scorer_attention_spread"):
            DartModel(tiny_config(**MIL, scorer_attention_spread=spread))
    with pytest.raises(ValueError, match="score_normalization"):
        _model()(torch.zeros(1, 3, 64, 64), score_normalization="batch")
    with pytest.raises(ValueError, match="mil"):
        DartConfig(backbone="videomamba", scorer_head="mil")._validate_dart()
    with pytest.raises(ValueError, match="evidence"):
        DartForImageClassification(tiny_config(**{**MIL, "scorer_head": "saliency"})).evidence_loss(
            torch.zeros(1, 40, 8, 8), torch.ones(1, 8, 8), torch.tensor([0]))


def test_pretraining_trains_the_head_alone_on_the_labels():
    model = _model()
    pixels, labels = _inputs()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    batches = [{"pixel_values": pixels, "labels": labels}]
    losses = pretrain_scorer_on_evidence(model, batches, 30, 1e-2)
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, before[n])}
    assert changed and all(n.startswith("dart.embeddings.scorer.head.") for n in changed), changed
    assert len(changed) == len(list(model.dart.embeddings.scorer.head.parameters()))
    assert losses[-1] < 0.5 * losses[0]  # one fixed batch: the head fits its labels


def test_export_with_a_dynamic_batch_matches_eager():
    """The recommended scorer's head exports: `torch.export` with a dynamic batch reproduces eager mode."""
    model = _model().eval()
    pixels, _ = _inputs()
    dynamic = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=64)}}
    program = torch.export.export(model, (pixels[:2],), dynamic_shapes=dynamic).module()
    for size in (1, 3):
        with torch.no_grad():
            got, expected = program(pixels[:size]), model(pixels[:size])
        torch.testing.assert_close(got["score_map"], expected["score_map"], atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(got["logits"], expected["logits"], atol=1e-5, rtol=1e-5)


def test_the_head_is_initialised_by_the_model():
    """`_init_weights` sets the head (normal weights of std `initializer_range`, zero biases, identity LayerNorm),
    also when a model is built without a state dict."""
    head = _model().dart.embeddings.scorer.head
    for linear in (head.embed, head.attention_v, head.attention_u, head.attention_w, head.classifier):
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert 0.017 < head.embed.weight.std().item() < 0.023
    assert torch.equal(head.norm.weight, torch.ones(40)) and torch.equal(head.norm.bias, torch.zeros(40))
    loaded = DartForImageClassification.from_pretrained(None, config=tiny_config(**MIL), state_dict={})
    for name, tensor in loaded.dart.embeddings.scorer.head.named_parameters():
        assert torch.isfinite(tensor).all() and tensor.abs().max() <= 1.0, name
