"""conversion/convert_seg_reshaper_original.py: the segmentation fork's reshaper keys (`reshaper.spn.spn.spn.*`) into
`DartImageReshaper`, key by key; against the fork's goldens (`dair_seg_reshaper*`, tolerances from the fixtures
README, section "Segmentation reshaper with inverse") and on small synthetic checkpoints in the fork's key layout.

Fixtures: ../shared/fixtures/original (or $DART_FIXTURES_DIR); the synthetic tests need none.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from conversion import convert_seg_reshaper_original as script
from modeling_dart.reshaper_dart import DartImageReshaper
from tests.conftest import require_fixture, write_untrusted_checkpoint

CHECKPOINT = "dair_seg_reshaper.pth"
GOLDEN = "dair_seg_reshaper_golden.safetensors"
# the README's suggested atol per tensor
ATOL = {"score": 1e-4, "pdf": 2e-7, "row_heights": 2e-3, "col_heights": 2e-3, "new_edges": 1e-2,
        "warped_image": 2e-2, "spn_mlp_out": 1e-2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ a small checkpoint in the fork's keys
def small_reshaper(seed: int = 0) -> DartImageReshaper:
    """MobileNetV3-Small cut after 4 entries with a 24-wide v1 head: the fork's layout, small."""
    torch.manual_seed(seed)
    reshaper = DartImageReshaper(scorer_trunk="mobilenet_v3_small", scorer_trunk_depth=4, scorer_hidden_size=24,
                                 score_grid_size=4, patch_size=16, downscale_factor=1)
    with torch.no_grad():  # move every tensor off its initial value, BatchNorm statistics included
        for tensor in reshaper.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
    return reshaper.eval()


def fork_keys(reshaper: DartImageReshaper, prefix: str = "reshaper.") -> dict[str, torch.Tensor]:
    """Our reshaper's tensors under the fork's names (written by hand, the inverse of the converter's rules)."""
    names = {"scorer.head.fc1.": "spn.spn.spn.mlp.net.0.", "scorer.head.fc2.": "spn.spn.spn.mlp.net.2.",
             "scorer.features.": "spn.spn.spn.features."}
    out = {}
    for key, tensor in reshaper.state_dict().items():
        ours = next(start for start in names if key.startswith(start))
        out[prefix + names[ours] + key[len(ours):]] = tensor.clone()
    return out


def test_a_small_checkpoint_converts_key_by_key_and_its_architecture_is_read_from_it(tmp_path):
    """An MMSegmentation checkpoint (`state_dict` entry, the segmentor's other keys beside the reshaper's): the trunk,
    its depth and the head's width come from the keys; every tensor lands where it came from; the other keys are
    counted, not converted; the warp keeps the fork's quirks unless `clean_warp`."""
    original = small_reshaper()
    state = fork_keys(original)
    state["backbone.patch_embed.proj.weight"] = torch.zeros(4, 3, 4, 4)
    state["decode_head.conv_seg.weight"] = torch.zeros(3, 4, 1, 1)
    torch.save({"meta": {"iter": 10}, "state_dict": state}, tmp_path / "segmentor.pth")
    reshaper, kwargs, report = script.convert_reshaper(tmp_path / "segmentor.pth", image_size=64)
    assert (kwargs["scorer_trunk"], kwargs["scorer_trunk_depth"], kwargs["scorer_hidden_size"]) == (
        "mobilenet_v3_small", 4, 24)
    assert kwargs["score_grid_size"] == 4 and kwargs["downscale_factor"] == 1 and kwargs["patch_size"] == 16
    assert kwargs["score_grid_per_cell"] is True
    assert kwargs["score_normalization"] == "batch" and kwargs["column_sampling"] == "strip"
    assert kwargs["first_edge_at_one"] and kwargs["edge_scale_from_first_image"]
    assert report["num_keys"] == len(original.state_dict()) and report["segmentor_keys_not_converted"] == 2
    for key, tensor in original.state_dict().items():
        assert torch.equal(reshaper.state_dict()[key], tensor), key
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert reshaper(x).warped_pixel_values.shape == (2, 3, 64, 64)
        portrait = reshaper(torch.randn(1, 3, 96, 48))
    assert portrait.warped_pixel_values.shape == (1, 3, 96, 48) and portrait.score_map.shape == (1, 6, 3)
    _, clean, _ = script.convert_reshaper(tmp_path / "segmentor.pth", image_size=64, clean_warp=True)
    assert clean["score_normalization"] == "image" and clean["column_sampling"] == "band"


def test_the_cli_writes_the_reshaper_refuses_to_overwrite_and_verifies(tmp_path, capsys):
    torch.save({"model": fork_keys(small_reshaper())}, tmp_path / "fork.pth")
    out = tmp_path / "out"
    args = ["--checkpoint", str(tmp_path / "fork.pth"), "--output_dir", str(out), "--image_size", "64"]
    assert script.main(args + ["--verify"]) == 0
    assert "verified" in capsys.readouterr().out
    loaded = script.load_converted_reshaper(out)
    for key, tensor in small_reshaper().state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert json.loads((out / "reshaper_config.json").read_text())["scorer_trunk"] == "mobilenet_v3_small"
    written = (out / "reshaper.safetensors").read_bytes()
    assert script.main(args) == 2
    error = capsys.readouterr().err
    assert "--output_dir" in error and "--overwrite" in error
    assert (out / "reshaper.safetensors").read_bytes() == written
    assert script.main(args + ["--overwrite"]) == 0
    assert script.main(args[:2] + ["--output_dir", str(tmp_path / "x"), "--image_size", "60"]) == 2
    assert "--image_size" in capsys.readouterr().err
    assert script.main(args[:2] + ["--output_dir", str(tmp_path / "y"), "--golden", "g.safetensors",
                                   "--clean_warp"]) == 2
    assert "--golden" in capsys.readouterr().err and not (tmp_path / "y").exists()


def _bad(state: dict, **changes) -> dict:
    state = dict(state)
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


@pytest.mark.parametrize("case", ["missing", "extra", "mis_shaped", "v2_head", "no_reshaper", "darmt", "two"])
def test_checkpoints_that_do_not_fit_are_refused_clearly(tmp_path, capsys, case):
    good = fork_keys(small_reshaper())
    head = "reshaper.spn.spn.spn.mlp.net."
    states = {
        "missing": (_bad(good, **{"reshaper.spn.spn.spn.features.1.block.0.0.weight": None}),
                    r"missing.*scorer\.features\.1\.block\.0\.0\.weight"),
        "extra": (_bad(good, **{"reshaper.spn.spn.spn.extra.weight": torch.zeros(1)}),
                  r"spn\.spn\.spn\.extra\.weight.*not a key"),
        "mis_shaped": (_bad(good, **{"reshaper.spn.spn.spn.features.0.1.weight": torch.zeros(7)}),
                       r"mis-shaped.*features\.0\.1\.weight: checkpoint \(7,\)"),
        "v2_head": (_bad(good, **{head + "2.weight": torch.zeros(576, 24), head + "2.bias": torch.zeros(576)}),
                    r"v2.*head v1"),
        "no_reshaper": ({"backbone.stem.weight": torch.zeros(1)}, r"no `reshaper\.spn\.spn\.spn\.\*` keys"),
        "darmt": ({"pre_image.x": torch.zeros(1), "layers.0.x": torch.zeros(1)}, r"DARMT.*convert_dart_original"),
        "two": ({**good, **fork_keys(small_reshaper(), prefix="aux.reshaper.")}, r"one `\.\.\.reshaper\.` prefix"),
    }
    state, message = states[case]
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    code = script.main(["--checkpoint", str(tmp_path / "bad.pth"), "--output_dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and len(error.strip().splitlines()) == 1, error
    assert re.search(message, error), error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_untrusted_pickle_is_refused(tmp_path, capsys):
    write_untrusted_checkpoint(tmp_path / "evil.pth")
    assert script.main(["--checkpoint", str(tmp_path / "evil.pth"), "--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "weights_only" in error and "this must never run" not in error


def test_with_a_segmenter_the_folder_is_a_complete_segmentation_model(tmp_path, capsys):
    """`--segmenter` (a tiny UperNet-ConvNeXt folder) behind the converted reshaper: a
    `DartReshaperForSemanticSegmentation` with both models' weights; a segmenter folder missing a tensor is refused."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSemanticSegmentation

    from modeling_dart import DartReshaperForSemanticSegmentation
    from tests.test_reshaper_segmentation import segmentation_backbone

    torch.manual_seed(3)
    upernet = AutoModelForSemanticSegmentation.from_config(segmentation_backbone("convnext")).eval()
    upernet.save_pretrained(tmp_path / "upernet")
    torch.save({"model": fork_keys(small_reshaper())}, tmp_path / "fork.pth")
    args = ["--checkpoint", str(tmp_path / "fork.pth"), "--image_size", "64", "--segmenter", str(tmp_path / "upernet")]
    assert script.main(args + ["--output_dir", str(tmp_path / "out"), "--verify"]) == 0, capsys.readouterr().err
    model = DartReshaperForSemanticSegmentation.from_pretrained(tmp_path / "out").eval()
    assert model.config.score_grid_size == 4 and model.config.downscale_factor == 1 and model.config.score_grid_per_cell
    assert model.config.score_normalization == "batch" and model.config.id2label == upernet.config.id2label
    for key, tensor in small_reshaper().state_dict().items():
        assert torch.equal(model.reshaper.state_dict()[key], tensor), key
    for key, tensor in upernet.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], tensor), key
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 4, 64, 64)

    weights = load_file(tmp_path / "upernet" / "model.safetensors")
    weights.pop(next(key for key in weights if key.startswith("decode_head.classifier")))
    save_file(weights, tmp_path / "upernet" / "model.safetensors", metadata={"format": "pt"})
    assert script.main(args + ["--output_dir", str(tmp_path / "out2")]) == 2
    assert "--segmenter" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- the fork's goldens
def _golden(case: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(require_fixture(GOLDEN) / GOLDEN, "pt") as handle:
        return {key[len(case) + 1:]: handle.get_tensor(key) for key in handle.keys() if key.startswith(case + ".")}


def _pixels(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@pytest.fixture(scope="module")
def converted():
    folder = require_fixture(CHECKPOINT, GOLDEN)
    return script.convert_reshaper(folder / CHECKPOINT, image_size=512)


@pytest.mark.parametrize("case", ["seg_a", "seg_b"])
def test_the_converted_reshaper_reproduces_the_forks_warp(converted, case):
    """seg_a (two photos at 512x512) and seg_b (one at 384x640, whose score grid the fork makes 24x40): the scorer's
    trunk features and MLP output, the score, density, row heights, column widths, strip edges and warped image
    within the README's tolerances, from one converted reshaper (its score grid follows the input)."""
    reshaper, _, report = converted
    assert report["num_keys"] == 362 and report["scorer_trunk"] == "efficientnet_b0"
    assert report["scorer_trunk_depth"] == 9 and report["scorer_hidden_size"] == 96
    g = _golden(case)
    pixels = _pixels(g["images_uint8"])
    with torch.no_grad():
        out = reshaper(pixels)
        features = reshaper.scorer.extract_features(pixels)
        mlp = reshaper.scorer.head(features.permute(0, 2, 3, 1))
    batch, _, height, width = pixels.shape
    assert out.score_map.shape == (batch, height // 16, width // 16)
    ours = {"score": out.score_map.reshape(batch, -1), "pdf": out.pdf, "row_heights": out.row_heights,
            "col_heights": out.col_widths, "new_edges": out.strip_edges, "warped_image": out.warped_pixel_values,
            "spn_mlp_out": mlp}
    for name, value in ours.items():
        torch.testing.assert_close(value.float(), g[name], atol=ATOL[name], rtol=0, msg=name)
    torch.testing.assert_close(features[:, :16], g["spn_features_first16ch"], atol=1e-1, rtol=1e-4)


def test_golden_comparison_passes_and_catches_a_wrong_weight(converted):
    reshaper, kwargs, _ = converted
    folder = require_fixture(GOLDEN)
    errors = script.compare_with_golden(reshaper, kwargs, folder / GOLDEN)
    assert set(errors) == {"seg_a", "seg_b"}
    assert {"warped_image", "new_edges", "spn_mlp_out"} <= set(errors["seg_a"]) & set(errors["seg_b"])
    state = reshaper.state_dict()
    broken = DartImageReshaper(**kwargs).eval()
    broken.load_state_dict({**state, "scorer.head.fc1.weight": state["scorer.head.fc1.weight"].flip(0)})
    with pytest.raises(script.ConversionError, match=r"seg_a\.score.*seg_a\.pdf"):
        script.compare_with_golden(broken, kwargs, folder / GOLDEN)
