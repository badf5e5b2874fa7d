"""Issue #23: `DartConfig.scorer_evidence_weight`, the attention-MIL evidence head of the image classifier. In training
with labels the loss gains the head's own loss and a KL pull of the scorer's density towards the head's attention;
evaluation and inference are unchanged."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_dart import DartConfig, DartForImageClassification
from modeling_dart.self_distillation_dart import MilEvidenceHead
from tests.conftest import tiny_config

# efficientnet_lite0 cut at depth 5: 40 channels on an 8x8 map for 64-pixel inputs, onto the 4x4 score grid
EVIDENCE = {"scorer_trunk": "efficientnet_lite0", "scorer_head": "saliency", "scorer_trunk_depth": 5}


def _pair(weight: float = 1.0, **overrides):
    """A model with the evidence head and the same model without it (every shared weight equal)."""
    torch.manual_seed(0)
    with_head = DartForImageClassification(tiny_config(**EVIDENCE, scorer_evidence_weight=weight, **overrides))
    without = DartForImageClassification(tiny_config(**EVIDENCE, **overrides))
    shared = {k: v for k, v in with_head.state_dict().items() if not k.startswith("evidence_head.")}
    without.load_state_dict(shared, strict=True)
    return with_head, without


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 64, 64, generator=generator), torch.tensor([0, 4, 2])


def test_the_option_builds_an_initialised_head_on_the_scorer_trunk_features():
    model, without = _pair()
    assert without.evidence_head is None
    head = model.evidence_head
    assert isinstance(head, MilEvidenceHead)
    assert head.embed.in_features == 40 and head.classifier.out_features == 5
    # `_init_weights`: normal weights of std initializer_range (PyTorch's default would give ~0.09 for 40 inputs),
    # zero biases, identity LayerNorm
    for linear in (head.embed, head.attention_v, head.attention_u, head.attention_w, head.classifier):
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert 0.017 < head.embed.weight.std().item() < 0.023 and 0.017 < head.attention_v.weight.std().item() < 0.023
    assert torch.equal(head.norm.weight, torch.ones(40)) and torch.equal(head.norm.bias, torch.zeros(40))
    loaded = DartForImageClassification.from_pretrained(None, config=model.config, state_dict={})
    for name, tensor in loaded.evidence_head.named_parameters():
        assert torch.isfinite(tensor).all() and tensor.abs().max() <= 1.0, name


def test_training_loss_adds_the_head_loss_and_the_kl_pull_and_nothing_else_changes():
    weight = 0.7
    model, without = _pair(weight)
    pixels, labels = _inputs()
    model.train()
    without.train()
    out = model(pixels, labels=labels)
    plain = without(pixels, labels=labels)
    torch.testing.assert_close(out.logits, plain.logits, rtol=0, atol=0)  # the head does not touch the forward
    with torch.no_grad():
        features = model.dart.embeddings.scorer.extract_features(pixels)  # (3, 40, 8, 8)
        head_logits, attention = model.evidence_head(features)
        target = attention.view(3, 4, 2, 4, 2).sum((2, 4)).flatten(1)  # 8x8 cells onto 4x4: sums of 2x2 blocks
        pdf = out.score_map.flatten(1) / out.score_map.flatten(1).sum(-1, keepdim=True)
        kl = (target * (target / pdf).log()).sum(-1).mean()
        expected = F.cross_entropy(out.logits, labels) + F.cross_entropy(head_logits, labels) + weight * kl
    assert kl > 1e-4  # a real pull: the density is not the target already
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.evidence_loss.detach(), expected - F.cross_entropy(out.logits, labels),
                               rtol=1e-5, atol=1e-6)
    assert out.to_tuple()[-1] is out.evidence_loss and plain.evidence_loss is None
    torch.testing.assert_close(plain.loss.detach(), F.cross_entropy(plain.logits, labels).detach())
    # training without labels, and evaluation with them: the plain loss, the same logits
    assert model(pixels).loss is None
    model.eval()
    without.eval()
    evaluated = model(pixels, labels=labels)
    torch.testing.assert_close(evaluated.logits, without(pixels).logits, rtol=0, atol=0)
    torch.testing.assert_close(evaluated.loss, F.cross_entropy(evaluated.logits, labels))
    assert evaluated.evidence_loss is None


def test_eval_runs_the_trunk_once_and_never_calls_the_head(monkeypatch):
    model, _ = _pair()
    pixels, labels = _inputs()
    calls = {"trunk": 0, "head": 0}
    scorer = model.dart.embeddings.scorer
    original = scorer.extract_features

    def counted(*args, **kwargs):
        calls["trunk"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(scorer, "extract_features", counted)
    model.evidence_head.register_forward_hook(lambda *args: calls.__setitem__("head", calls["head"] + 1))
    model.eval()(pixels, labels=labels)
    assert calls == {"trunk": 1, "head": 0}
    model.train()(pixels, labels=labels)
    assert calls == {"trunk": 2, "head": 1}  # training reuses the scorer's own trunk pass


def test_the_kl_term_trains_the_scorer_and_not_the_head_nor_the_trunk():
    """Same weights, weight 2 against 0: the difference of the gradients is the KL term's. It reaches the scorer's
    head, not the evidence head (its target is detached) nor the frozen trunk."""
    pixels, labels = _inputs()
    grads = {}
    for weight in (2.0, 0.0):
        model, _ = _pair(2.0)
        model.config.scorer_evidence_weight = weight  # the same weights, the pull switched off
        model.train()
        model(pixels, labels=labels).loss.backward()
        grads[weight] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert not any(".scorer.features." in n for n in grads[weight])
    scorer_head = [n for n in grads[2.0] if ".scorer.head." in n]
    assert scorer_head
    assert any(not torch.allclose(grads[2.0][n], grads[0.0][n]) for n in scorer_head)
    evidence = [n for n in grads[2.0] if n.startswith("evidence_head.")]
    assert len(evidence) == len(list(model.evidence_head.parameters()))
    for name in evidence:
        torch.testing.assert_close(grads[2.0][name], grads[0.0][name], rtol=0, atol=0)
    for name in grads[2.0]:
        if ".scorer." not in name:  # the backbone's gradient comes from the classification loss alone
            torch.testing.assert_close(grads[2.0][name], grads[0.0][name], rtol=0, atol=0)


def test_vim_backbone_takes_the_option():
    model, _ = _pair(backbone="vim", use_mamba_kernels=False)
    pixels, labels = _inputs()
    model.train()
    loss = model(pixels, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.evidence_head.parameters())


def test_the_weight_and_the_head_round_trip_through_save_and_load(tmp_path):
    model, _ = _pair(0.25)
    model.save_pretrained(tmp_path)
    assert DartConfig.from_pretrained(tmp_path).scorer_evidence_weight == 0.25
    loaded = DartForImageClassification.from_pretrained(tmp_path)
    assert loaded.config.scorer_evidence_weight == 0.25
    for name, tensor in model.evidence_head.state_dict().items():
        assert torch.equal(loaded.evidence_head.state_dict()[name], tensor), name
    assert DartConfig().scorer_evidence_weight == 0.0


@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf, "1", True, None])
def test_bad_weights_are_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="`scorer_evidence_weight`"):
        tiny_config(**EVIDENCE, scorer_evidence_weight=value)
    config = tiny_config(**EVIDENCE)
    with pytest.raises(ValueError, match="`scorer_evidence_weight`"):
        config.scorer_evidence_weight = value
    assert config.scorer_evidence_weight == 0.0


def test_a_model_that_cannot_use_it_refuses_it():
    with pytest.raises(ValueError, match="`scorer_evidence_weight`.*learned"):
        tiny_config(scorer="uniform", scorer_evidence_weight=1.0)
    from modeling_dart import DartVideoConfig

    with pytest.raises(ValueError, match="`scorer_evidence_weight`"):
        DartVideoConfig(image_size=64, patch_size=8, score_grid_size=4, num_tokens=16, hidden_size=32,
                        num_hidden_layers=1, num_frames=2, scorer_evidence_weight=1.0)
    with pytest.raises(ValueError, match="`scorer_evidence_weight`.*`num_labels`"):
        DartForImageClassification(tiny_config(**EVIDENCE, scorer_evidence_weight=1.0, num_labels=0))


# -------------------------------------------------- pre-training the scorer on the evidence (`pretrain_scorer_on_evidence`)
def _kl_to_the_head(model, pixels) -> float:
    """KL(head attention on the score grid || scorer density) for these images, without the head's own loss."""
    from modeling_dart.self_distillation_dart import density_distillation_loss, resample_mass

    with torch.no_grad():
        score_map, features = model.dart.embeddings.compute_scores(pixels, return_features=True)
        _, attention = model.evidence_head(features)
        target = resample_mass(attention, score_map.shape[-1]).flatten(1)
        pdf = score_map.flatten(1) / score_map.flatten(1).sum(-1, keepdim=True)
        return density_distillation_loss(pdf, target).item()


def test_pretraining_moves_only_the_scorer_and_the_head_towards_each_other():
    from modeling_dart.self_distillation_dart import pretrain_scorer_on_evidence

    model, _ = _pair()
    model.eval()
    pixels, labels = _inputs()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    kl_before = _kl_to_the_head(model, pixels)
    batches = [{"pixel_values": pixels, "labels": labels}]  # one batch: iterated again for every step
    losses = pretrain_scorer_on_evidence(model, batches, steps=40, learning_rate=3e-2, warmup_fraction=0.0)
    assert len(losses) == 40 and losses[-1] < losses[0]
    assert not model.training and all(p.grad is None for p in model.parameters())
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, before[n])}
    assert changed and all(n.startswith(("evidence_head.", "dart.embeddings.scorer.")) for n in changed), changed
    assert not any(n.startswith("dart.embeddings.scorer.features.") for n in changed)  # the frozen trunk
    assert any(n.startswith("evidence_head.") for n in changed)
    assert any(n.startswith("dart.embeddings.scorer.head.") for n in changed)
    # the head learned a new attention and the scorer followed it: the scorer is closer to the head's attention than
    # the untrained scorer is to it
    trained = _kl_to_the_head(model, pixels)
    untrained, _ = _pair()
    untrained.evidence_head.load_state_dict(model.evidence_head.state_dict())
    assert trained < _kl_to_the_head(untrained, pixels) - 0.01
    assert kl_before > 0


def test_pretraining_zero_steps_changes_nothing_and_bad_arguments_are_refused():
    from modeling_dart.self_distillation_dart import pretrain_scorer_on_evidence

    model, without = _pair()
    pixels, labels = _inputs()
    batches = [{"pixel_values": pixels, "labels": labels}]
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    assert pretrain_scorer_on_evidence(model, batches, steps=0, learning_rate=1e-2) == []
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    with pytest.raises(ValueError, match="`model`"):
        pretrain_scorer_on_evidence(without, batches, steps=1, learning_rate=1e-2)
    for steps in (-1, 1.5, True):
        with pytest.raises(ValueError, match="`steps`"):
            pretrain_scorer_on_evidence(model, batches, steps=steps, learning_rate=1e-2)
    for rate in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`learning_rate`"):
            pretrain_scorer_on_evidence(model, batches, steps=1, learning_rate=rate)
        with pytest.raises(ValueError, match="`evidence_learning_rate`"):
            pretrain_scorer_on_evidence(model, batches, steps=1, learning_rate=1e-2, evidence_learning_rate=rate)
    with pytest.raises(ValueError, match="`warmup_fraction`"):
        pretrain_scorer_on_evidence(model, batches, steps=1, learning_rate=1e-2, warmup_fraction=1.0)
