"""The `"saliency"` score head: its dynamic range against the original heads, its gradients (gradcheck), its start
from the trunk's feature saliency, and its config checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeling_dart import DartConfig, DartForImageClassification
from modeling_dart.scorer_dart import DartScorer, bounded_exp_density
from tests.conftest import tiny_config


class FixedMap(nn.Module):
    """A stand-in head whose raw map is given: the scorer's own transform then turns it into scores."""

    def __init__(self, raw: torch.Tensor):
        super().__init__()
        self.raw = raw

    def forward(self, features):
        return self.raw


def binary_map(grid: int, side: int) -> torch.Tensor:
    """`(1, 1, grid, grid)`: 1 on a `side x side` block of cells in the top-left corner, 0 elsewhere."""
    raw = torch.zeros(1, 1, grid, grid)
    raw[..., :side, :side] = 1.0
    return raw


def scores_of(head: str, raw: torch.Tensor) -> torch.Tensor:
    """The scores a scorer with head `head` gives when its head's raw map is `raw` (1 feature channel)."""
    scorer = DartScorer(tiny_config(score_grid_size=raw.shape[-1], scorer_head=head))
    if head == "v1":  # a per-position MLP on (B, h, w, C) features
        scorer.head = FixedMap(raw.permute(0, 2, 3, 1))
    elif head == "v2":  # channel gates sigmoid(MLP(mean)) ~ 1 on the single channel: the raw map is the features
        scorer.head = FixedMap(torch.full((1, 1), 30.0))
    else:
        scorer.head = FixedMap(raw)
    return scorer(None, features=raw)[0]


def test_bounded_density_reaches_but_never_passes_its_ratio():
    logits = torch.linspace(-50, 50, 101)
    for ratio in (2.0, 100.0, 1e4):
        density = bounded_exp_density(logits, torch.tensor(1.5), ratio)
        assert (density > 0).all()
        assert density.max() / density.min() <= ratio * (1 + 1e-5)
        assert density.max() / density.min() > 0.999 * ratio
    # near zero it is exp(temperature * z)
    small = torch.tensor([-1e-3, 0.0, 1e-3])
    torch.testing.assert_close(bounded_exp_density(small, torch.tensor(2.0), 1e4), torch.exp(2.0 * small))


def test_a_perfect_object_map_is_denser_with_the_saliency_head_than_the_original_heads():
    """On a 14x14 grid with the object on 9 cells (about 5%), the original heads squash a perfect binary map to a
    ~2x density ratio (v1: `sigmoid(z) + 0.1`); the saliency head keeps a ratio of more than 20x and puts most of
    the density on the object."""
    raw = binary_map(14, 3)
    inside = raw[0, 0].bool()
    v1 = scores_of("v1", raw)
    ratio_v1 = (v1[inside].mean() / v1[~inside].mean()).item()
    assert 1.8 < ratio_v1 < 2.2
    v2 = scores_of("v2", raw)
    ratio_v2 = (v2[inside].mean() / v2[~inside].mean()).item()
    assert 2.4 < ratio_v2 < 3.0
    saliency = scores_of("saliency", raw)
    ratio = (saliency[inside].mean() / saliency[~inside].mean()).item()
    assert ratio > 20.0
    pdf = saliency / saliency.sum()
    assert pdf[inside].sum() > 0.5
    assert (v1 / v1.sum())[inside].sum() < 0.15


def test_saliency_head_gradcheck():
    torch.manual_seed(0)
    config = tiny_config(score_grid_size=3, scorer_head="saliency", scorer_hidden_size=5,
                         scorer_max_density_ratio=50.0)
    scorer = DartScorer(config).double()
    nn.init.normal_(scorer.head.fc2.weight, std=0.5)  # a non-zero correction, so its path is checked too
    channels = scorer.head.fc1.in_features
    features = torch.randn(2, channels, 6, 6, dtype=torch.float64, requires_grad=True)
    params = [scorer.head.fc1.weight, scorer.head.fc2.weight, scorer.head.prior_weight, scorer.log_temperature]

    def scores(features, *weights):
        replaced = dict(zip(["head.fc1.weight", "head.fc2.weight", "head.prior_weight", "log_temperature"], weights))
        return torch.func.functional_call(scorer, replaced, (None, "image", features))

    assert torch.autograd.gradcheck(scores, (features, *[p.detach().requires_grad_(True) for p in params]))


def test_untrained_head_follows_the_feature_saliency():
    """`fc2` starts at zero: the score map of a fresh model peaks where the trunk's features stand out."""
    torch.manual_seed(0)
    model = DartForImageClassification(tiny_config(scorer_head="saliency"))
    scorer = model.dart.embeddings.scorer
    assert torch.equal(scorer.head.fc2.weight, torch.zeros_like(scorer.head.fc2.weight))
    assert scorer.log_temperature.exp().item() == pytest.approx(model.config.scorer_temperature)
    channels = scorer.head.fc1.in_features
    features = torch.randn(1, channels, 8, 8) * 0.1
    features[0, :, 5, 2] += 3.0  # one position unlike the others, in cell (2, 1) of the 4x4 grid
    scores = scorer(None, features=features)[0]
    assert scores.argmax().item() == 2 * 4 + 1
    assert (scores.max() / scores.min()).item() > 20.0


def test_temperature_and_head_learn_from_the_classification_loss():
    torch.manual_seed(0)
    model = DartForImageClassification(tiny_config(scorer_head="saliency", scorer_trunk="efficientnet_lite0"))
    pixels = torch.randn(2, 3, 64, 64)
    model(pixels, labels=torch.tensor([0, 1])).loss.backward()
    scorer = model.dart.embeddings.scorer
    for parameter in (scorer.log_temperature, scorer.head.fc2.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert all(p.grad is None for p in scorer.features.parameters())  # the frozen trunk
    # once the correction is not zero, the prior's relative weight learns too
    nn.init.normal_(scorer.head.fc2.weight, std=0.1)
    model.zero_grad()
    model(pixels, labels=torch.tensor([0, 1])).loss.backward()
    assert scorer.head.prior_weight.grad.abs() > 0 and scorer.head.fc1.weight.grad.abs().sum() > 0


def test_released_heads_are_unchanged_by_the_new_options():
    """The new fields touch only the saliency head: v1 scores are the same whatever their values."""
    torch.manual_seed(0)
    base = DartScorer(tiny_config())
    other = DartScorer(tiny_config(scorer_max_density_ratio=7.0, scorer_temperature=3.0))
    other.load_state_dict(base.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(base(x), other(x))


@pytest.mark.parametrize(
    "field, value",
    [("scorer_max_density_ratio", 1.0), ("scorer_max_density_ratio", "big"), ("scorer_temperature", 0.0),
     ("scorer_head", "v3"), ("scorer_trunk", "resnet50")],
)
def test_bad_saliency_options_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        DartConfig(**{field: value})


def test_saliency_depth_follows_the_input_size():
    small = DartConfig(image_size=160, score_grid_size=10, scorer_trunk="efficientnet_lite0", scorer_head="saliency")
    assert small.resolved_scorer_trunk_depth() == 4  # stride 4
    large = DartConfig(image_size=448, score_grid_size=14, scorer_trunk="efficientnet_lite0", scorer_head="saliency")
    assert large.resolved_scorer_trunk_depth() == 6  # stride 8
    assert DartConfig(scorer_head="v1").resolved_scorer_trunk_depth() == 11  # the original's


@pytest.mark.parametrize("backbone", ["vit", "vim"])
@pytest.mark.parametrize("head", ["v1", "v2", "saliency"])
def test_no_parameter_is_zero_dimensional(backbone, head):
    """FSDP2's `fully_shard` refuses 0-d parameters (it shards along dim 0): the saliency head's `prior_weight` and
    the scorer's `log_temperature` are one-element vectors."""
    model = DartForImageClassification(tiny_config(backbone=backbone, scorer_head=head))
    zero_dim = [name for name, parameter in model.named_parameters() if parameter.dim() == 0]
    assert zero_dim == []
