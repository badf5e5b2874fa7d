"""conversion/convert_dart_original.py: CLI behaviour, key accounting, checkpoint wrappers, safety, generality."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

from conversion import convert_dart_original as conv
from tests.conftest import require_fixture, write_untrusted_checkpoint

DEIT_VARIANTS = ["darvit_tiny", "darvit_tiny_v2", "darvit_tiny_121p", "darvit_sm", "darvit_sm_144p", "darvit_sm_288p",
                 "darvit_sm_392p"]
VIM_VARIANTS = ["darvim_tiny", "darvim_tiny_2seq", "darvim_sm", "darvim_sm_2seq"]


def tiny_checkpoint():
    return require_fixture("darvit_tiny_depth2.pth") / "darvit_tiny_depth2.pth"


def original_state_dict():
    return torch.load(tiny_checkpoint(), map_location="cpu", weights_only=True)["model"]


def run(argv, capsys):
    code = conv.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_a_complete_hub_folder(tmp_path, capsys):
    out_dir = tmp_path / "dart-deit-ti"
    code, out, err = run(["--variant", "darvit_tiny", "--checkpoint", tiny_checkpoint(), "--output_dir", out_dir,
                          "--verify"], capsys)
    assert code == 0, err
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_dart.py",
                 "configuration_dart.py", "image_processing_dart.py"):
        assert (out_dir / name).is_file(), name
    config = json.loads((out_dir / "config.json").read_text())
    assert config["id2label"]["0"] == "tench" and config["id2label"]["281"] == "tabby" and len(config["id2label"]) == 1000
    assert config["num_hidden_layers"] == 2 and config["num_tokens"] == 196 and config["scorer_head"] == "v1"
    card = (out_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-classification\n")
    assert "trust_remote_code=True" in card
    assert "verified" in out
    top5 = [line for line in out.splitlines() if re.match(r"^\s+[01]\.\d{4}\s+\S", line)]
    assert len(top5) == 5


def test_converted_folder_reloads_with_the_same_weights(tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    import modeling_dart  # noqa: F401

    out_dir = tmp_path / "out"
    assert run(["--variant", "darvit_tiny", "--checkpoint", tiny_checkpoint(), "--output_dir", out_dir], capsys)[0] == 0
    model = AutoModelForImageClassification.from_pretrained(out_dir)
    state = model.state_dict()
    for key, tensor in original_state_dict().items():
        assert torch.equal(state[conv.convert_key(key)], tensor), key


def test_refuses_to_overwrite_without_flag(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    code, _, err = run(["--variant", "darvit_tiny", "--checkpoint", tiny_checkpoint(), "--output_dir", out_dir], capsys)
    assert code == 2 and "--overwrite" in err
    assert (out_dir / "keep.txt").read_text() == "precious"
    code, _, err = run(["--variant", "darvit_tiny", "--checkpoint", tiny_checkpoint(), "--output_dir", out_dir,
                        "--overwrite"], capsys)
    assert code == 0, err
    # the converter replaces the files it writes and never deletes one it did not write (#24)
    assert (out_dir / "keep.txt").read_text() == "precious" and (out_dir / "model.safetensors").is_file()


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "mutation,message",
    [
        ("drop", "missing key"),
        ("extra", "unexpected key"),
        ("reshape", "mis-shaped key"),
        ("gap", "not contiguous"),
    ],
)
def test_key_mismatches_are_errors(tmp_path, capsys, mutation, message):
    state = dict(original_state_dict())
    if mutation == "drop":
        del state["blocks.1.mlp.fc2.bias"]
    elif mutation == "extra":
        state["dist_token"] = torch.zeros(1, 1, 192)
    elif mutation == "reshape":
        state["blocks.0.attn.qkv.weight"] = torch.zeros(576, 191)
    elif mutation == "gap":
        state = {k.replace("blocks.1.", "blocks.2."): v for k, v in state.items()}
    path = _save(tmp_path / "bad.pth", {"model": state})
    code, _, err = run(["--variant", "darvit_tiny", "--checkpoint", path, "--output_dir", tmp_path / "out"], capsys)
    assert code == 2
    assert message in err
    assert not (tmp_path / "out").exists()


def test_wrong_variant_is_refused(tmp_path, capsys):
    code, _, err = run(["--variant", "darvit_sm", "--checkpoint", tiny_checkpoint(), "--output_dir", tmp_path / "o"], capsys)
    assert code == 2 and "mis-shaped" in err


def test_training_checkpoint_with_args_and_ema(tmp_path):
    state = original_state_dict()
    ema = {k: (v + 1 if k == "head.bias" else v) for k, v in state.items()}
    path = _save(tmp_path / "train.pth", {
        "model": state, "model_ema": ema, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "lr_scheduler": {"last_epoch": 3}, "epoch": 299, "scaler": {"scale": 65536.0},
        "args": argparse.Namespace(model="darvit_tiny", input_size=448, lr=5e-4, data_path="/data"),
    })
    model, _, report = conv.convert("darvit_tiny", path, "model")
    assert torch.equal(model.classifier.bias, state["head.bias"])
    model_ema, _, report_ema = conv.convert("darvit_tiny", path, "model_ema")
    assert torch.equal(model_ema.classifier.bias, ema["head.bias"]) and report_ema["weights"] == "model_ema"


def test_other_wrappers(tmp_path):
    state = original_state_dict()
    for obj in (state, {"module": state}, {"model": {"module." + k: v for k, v in state.items()}}):
        model, _, _ = conv.convert("darvit_tiny", _save(tmp_path / "w.pth", obj), "model")
        assert torch.equal(model.classifier.weight, state["head.weight"])
    with pytest.raises(conv.ConversionError, match="model_ema"):
        conv.convert("darvit_tiny", _save(tmp_path / "noema.pth", {"model": state}), "model_ema")


def test_untrusted_pickle_is_refused(tmp_path):
    path = write_untrusted_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(conv.ConversionError, match="weights_only"):
        conv.load_original_checkpoint(path)
    with pytest.raises(conv.ConversionError, match="not found"):
        conv.load_original_checkpoint(tmp_path / "missing.pth")


def test_reduced_depth_is_inferred(tmp_path):
    state = {k: v for k, v in original_state_dict().items() if not k.startswith("blocks.1.")}
    model, _, report = conv.convert("darvit_tiny", _save(tmp_path / "d1.pth", {"model": state}), "model")
    assert report["depth"] == 1 and model.config.num_hidden_layers == 1


def _synthetic_from_manifest(variant):
    manifest = json.loads((require_fixture(f"manifest_{variant}.json") / f"manifest_{variant}.json").read_text())
    gen = torch.Generator().manual_seed(0)
    state = {}
    for entry in manifest["state_dict"]:
        dtype = getattr(torch, entry["dtype"].replace("torch.", ""))
        shape = entry["shape"]
        if dtype.is_floating_point:
            state[entry["key"]] = torch.randn(shape, generator=gen, dtype=dtype) * 0.02
        else:
            state[entry["key"]] = torch.randint(0, 100, shape, generator=gen, dtype=dtype)
    if "running_var" in " ".join(state):
        for key in state:
            if key.endswith("running_var"):
                state[key] = state[key].abs() + 1
    return manifest, state


@pytest.mark.parametrize("variant", DEIT_VARIANTS + VIM_VARIANTS)
def test_every_released_variant_converts_at_full_size(tmp_path, variant):
    """Full-size checkpoints built from the manifests of all 11 variants: every key maps, shapes and params match."""
    manifest, state = _synthetic_from_manifest(variant)
    model, _, report = conv.convert(variant, _save(tmp_path / "full.pth", {"model": state}), "model")
    assert report["full_depth"] and report["num_keys"] == len(state)
    assert sum(p.numel() for p in model.parameters()) == manifest["param_counts"]["total"]
    converted = model.state_dict()
    for key, tensor in state.items():
        assert torch.equal(converted[conv.convert_key(key)], tensor), key
    assert model.config.num_tokens == manifest["config"]["num_patches"]


def test_push_to_hub_sends_every_file_in_one_commit(tmp_path, capsys, monkeypatch):
    """The Hub is unreachable here: check the upload operations up to the HTTP boundary."""
    from huggingface_hub import HfApi

    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo", (repo_id, kw)))

    def fake_commit(self, repo_id, operations, commit_message, **kw):
        calls["commit"] = (repo_id, [op.path_in_repo for op in operations], commit_message)

    monkeypatch.setattr(HfApi, "create_commit", fake_commit)
    out_dir = tmp_path / "out"
    code, out, err = run(["--variant", "darvit_tiny", "--checkpoint", tiny_checkpoint(), "--output_dir", out_dir,
                          "--push_to_hub", "my-org/dart-deit-ti"], capsys)
    assert code == 0, err
    assert calls["repo"][0] == "my-org/dart-deit-ti"
    repo_id, files, _ = calls["commit"]
    assert repo_id == "my-org/dart-deit-ti"
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_dart.py"} <= set(files)
    assert sorted(files) == sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------- darmt_l6 (reshaper)
DARMT_CHECKPOINT = "darmt_l6_reduced.pth"


def darmt_checkpoint():
    return require_fixture(DARMT_CHECKPOINT) / DARMT_CHECKPOINT


def darmt_state_dict():
    return torch.load(darmt_checkpoint(), map_location="cpu", weights_only=True)["model"]


def test_darmt_l6_cli_writes_a_verified_folder(tmp_path, capsys):
    """The reduced DARMT (widths 32..192, depths 1/1/2/1, heads 2/2/4/6) in-process through the CLI with --verify: a
    complete folder, the architecture read from the checkpoint, every original tensor in place (the Relpos buffers
    checked and left out), ImageNet labels, a model card. Its end-to-end parity is in test_reshaper_classification."""
    from transformers import AutoModelForImageClassification

    from modeling_dart import DartReshaperForImageClassification

    out_dir = tmp_path / "darmt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: two threads on a busy two-core machine wait for each other
    try:
        code, out, err = run(["--variant", "darmt_l6", "--checkpoint", darmt_checkpoint(), "--output_dir", out_dir,
                              "--verify"], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md",
                 "modeling_reshaper_dart.py", "configuration_reshaper_dart.py", "modeling_rmt.py"):
        assert (out_dir / name).is_file(), name
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == "dart_reshaper" and config["backbone_config"]["model_type"] == "rmt"
    rmt = config["backbone_config"]
    assert (rmt["embed_dims"], rmt["depths"], rmt["num_heads"]) == ([32, 64, 128, 192], [1, 1, 2, 1], [2, 2, 4, 6])
    assert rmt["layerscales"] == [False, False, True, True] and rmt["init_values"] == [2] * 4
    assert rmt["heads_ranges"] == [6] * 4 and rmt["mlp_ratios"] == [4, 4, 3, 3]
    assert (config["score_normalization"], config["first_edge_at_one"], config["edge_scale_from_first_image"],
            config["column_sampling"]) == ("batch", True, True, "strip")
    assert config["id2label"]["0"] == "tench" and config["backbone_config"]["id2label"]["281"] == "tabby"
    card = (out_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-classification\n")
    assert "trust_remote_code=True" in card and "6,488,789" in card
    assert "verified: 536 tensors" in out
    report = json.loads(out[out.index("{"):out.index("}") + 1])
    assert report["relative_position_buffers_checked_and_left_out"] == 8
    assert report["relative_position_values_left_out"] == 16 + 32 * 3 + 2 + 2 + 4 + 6  # angles + decays
    top5 = [line for line in out.splitlines() if re.match(r"^\s+[01]\.\d{4}\s+\S", line)]
    assert len(top5) == 5
    model = AutoModelForImageClassification.from_pretrained(out_dir)
    assert type(model) is DartReshaperForImageClassification
    state = model.state_dict()
    original = darmt_state_dict()
    for key, tensor in original.items():
        new = conv.convert_darmt_key(key)
        if new is None:
            assert ".Relpos." in key
            continue
        assert torch.equal(state[new], tensor.reshape(state[new].shape)), key
    assert len(state) == len(original) - 8


def test_darmt_l6_key_errors_name_the_key(tmp_path, capsys):
    state = darmt_state_dict()
    model, _, _ = conv.convert_darmt(_save(tmp_path / "d.pth", {"model": state}))
    with pytest.raises(conv.ConversionError, match=r"pre_image\.spn\.spn\.spn\.mlp\.net\.1\.weight"):
        conv.convert_darmt_state_dict({**state, "pre_image.spn.spn.spn.mlp.net.1.weight": torch.zeros(1)}, model)
    with pytest.raises(conv.ConversionError, match=r"layers\.0\.blocks\.0\.retention\.g_proj\.weight"):
        conv.convert_darmt_state_dict({**state, "layers.0.blocks.0.retention.g_proj.weight": torch.zeros(1)}, model)
    for key in ("layers.1.blocks.0.ffn.dwconv.conv.bias", "pre_image.spn.spn.spn.features.3.1.block.1.1.running_var"):
        with pytest.raises(conv.ConversionError, match="missing key"):
            conv.convert_darmt_state_dict({k: v for k, v in state.items() if k != key}, model)
    misshaped = {**state, "pre_image.spn.spn.spn.mlp.net.0.bias": torch.zeros(95)}
    with pytest.raises(conv.ConversionError, match=r"mis-shaped.*mlp\.net\.0\.bias"):
        conv.convert_darmt_state_dict(misshaped, model)
    tampered = {**state, "layers.2.Relpos.decay": state["layers.2.Relpos.decay"] * 1.001}
    with pytest.raises(conv.ConversionError, match=r"layers\.2\.Relpos\.decay differs"):
        conv.convert_darmt(_save(tmp_path / "t.pth", {"model": tampered}))
    # the angles: a stored table that differs from the config's, one of another length, and one missing
    for key, angle, message in (("layers.0.Relpos.angle", state["layers.0.Relpos.angle"] * 0.999, "differs"),
                                ("layers.3.Relpos.angle", state["layers.3.Relpos.angle"][:16], "has shape")):
        with pytest.raises(conv.ConversionError, match=re.escape(key) + " " + message):
            conv.convert_darmt_state_dict({**state, key: angle}, model)
    with pytest.raises(conv.ConversionError, match=r"missing key 'layers\.2\.Relpos\.angle'"):
        conv.convert_darmt_state_dict({k: v for k, v in state.items() if k != "layers.2.Relpos.angle"}, model)
    # the wrong converter for the file: each names the right one, and nothing is written
    code, _, err = run(["--variant", "darvit_tiny", "--checkpoint", darmt_checkpoint(), "--output_dir",
                        tmp_path / "o1"], capsys)
    assert code == 2 and "--variant darmt_l6" in err and not (tmp_path / "o1").exists()
    code, _, err = run(["--variant", "darmt_l6", "--checkpoint", tiny_checkpoint(), "--output_dir", tmp_path / "o2"],
                       capsys)
    assert code == 2 and "token DART checkpoint" in err and not (tmp_path / "o2").exists()
    rmt_only = _save(tmp_path / "rmt.pth", {"model": {k: v for k, v in state.items() if not k.startswith("pre_image.")}})
    code, _, err = run(["--variant", "darmt_l6", "--checkpoint", rmt_only, "--output_dir", tmp_path / "o3"], capsys)
    assert code == 2 and "convert_rmt_original.py" in err


def plain_backbone_state_dicts():
    """Small state dicts in the key layout of the original ViT/DeiT (timm) and Vision Mamba (hustvl/Vim) releases."""
    common = {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "cls_token": torch.zeros(1, 1, 8),
              "pos_embed": torch.zeros(1, 5, 8), "head.weight": torch.zeros(4, 8), "head.bias": torch.zeros(4)}
    deit = {**common, "blocks.0.norm1.weight": torch.ones(8), "blocks.0.attn.qkv.weight": torch.zeros(24, 8),
            "norm.weight": torch.ones(8)}
    vim = {**common, "layers.0.mixer.in_proj.weight": torch.zeros(32, 8), "layers.0.norm.weight": torch.ones(8),
           "norm_f.weight": torch.ones(8)}
    return {"ViT/DeiT": deit, "Vision Mamba": vim}


def test_darmt_l6_refuses_a_plain_vit_or_vim_checkpoint_naming_the_wrapper(tmp_path, capsys):
    """A ViT/DeiT or Vim release checkpoint given as darmt_l6: one error line that says what the file is and names
    convert_vit_to_dart.py (which wraps such backbones in DART); nothing is written."""
    for kind, state in plain_backbone_state_dicts().items():
        path = _save(tmp_path / "plain.pth", {"model": state})
        code, _, err = run(["--variant", "darmt_l6", "--checkpoint", path, "--output_dir", tmp_path / "out"], capsys)
        assert code == 2 and not (tmp_path / "out").exists(), err
        assert len(err.strip().splitlines()) == 1 and kind in err and "convert_vit_to_dart.py" in err, err


def test_darmt_l6_full_size_from_the_manifest_on_the_meta_device():
    """The full-size DARMT_L6 from `manifest_darmt_l6.json` (shapes only, on the meta device; the Relpos decays from
    the manifest's per-head values, the angles computed): the config read from it is RMT-L6 behind the original
    reshaper, every key maps, and the model has the original's 99,595,485 parameters. The 8 Relpos buffers left out
    hold 160 values: the decays 7 + 7 + 14 + 20 = 48, the angles 16 + 32 + 32 + 32 = 112."""
    from modeling_dart import DartReshaperConfig, DartReshaperForImageClassification
    from modeling_dart.modeling_rmt import rmt_rotary_angles

    manifest = json.loads((require_fixture("manifest_darmt_l6.json") / "manifest_darmt_l6.json").read_text())
    decays = manifest["config"]["rmt"]["decay_per_head"]
    state = {}
    for entry in manifest["state_dict"]:
        key, shape = entry["key"], entry["shape"]
        if key.endswith(".Relpos.decay"):
            state[key] = torch.tensor(decays[int(key.split(".")[1])], dtype=torch.float32)
        elif key.endswith(".Relpos.angle"):
            state[key] = rmt_rotary_angles(shape[0])
        else:
            state[key] = torch.empty(shape, dtype=getattr(torch, entry["dtype"].replace("torch.", "")), device="meta")
    assert len(state) == 1484
    config = conv.build_darmt_config(state)
    expected = DartReshaperConfig.darmt_l6()
    for field in ("embed_dims", "depths", "num_heads", "init_values", "heads_ranges", "mlp_ratios",
                  "chunkwise_recurrents", "layerscales", "layer_init_values", "drop_path_rate", "projection"):
        assert getattr(config.backbone_config, field) == getattr(expected.backbone_config, field), field
    assert config.reshaper_kwargs() == expected.reshaper_kwargs() and config.num_labels == 1000
    with torch.device("meta"):
        model = DartReshaperForImageClassification(config)
    counts = manifest["param_counts"]
    assert sum(p.numel() for p in model.parameters()) == counts["total"] == 99_595_485
    assert sum(p.numel() for p in model.reshaper.parameters()) == counts["dair_pre_image"]
    converted = conv.convert_darmt_state_dict(state, model)
    assert len(converted) == len(state) - 8 == len(model.state_dict())
    relpos = [key for key in state if ".Relpos." in key]
    assert sum(state[key].numel() for key in relpos if key.endswith("decay")) == 48
    assert sum(state[key].numel() for key in relpos if key.endswith("angle")) == 112
