"""Wrapping pretrained backbones in DART (`conversion/convert_vit_to_dart.py`, `modeling_dart.from_backbone`,
`DartForImageClassification.from_pretrained_backbone`): Transformers ViT / DeiT folders built here with random
weights (the Hub is not reachable), and original Vim checkpoints built from the darvim fixtures without the scorer.

References are computed by Transformers' own models (or, for Vim, by the original research code's stored outputs),
never by the code under test."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conversion import convert_vit_to_dart as cli
from modeling_dart import DartForImageClassification
from modeling_dart.conversion_utils import ConversionError
from modeling_dart.from_backbone import convert_backbone, resize_position_table
from tests.conftest import require_fixture

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=16,
            num_labels=5, hidden_act="gelu", layer_norm_eps=1e-12)


def _randomize(model, seed=0, std=0.3):
    """Random weights of a scale that makes every tensor matter (Transformers' init leaves biases at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def _save_vit(folder, image_size=224, kind="vit", seed=0, processor=True):
    from transformers import (
        DeiTConfig,
        DeiTForImageClassification,
        DeiTForImageClassificationWithTeacher,
        DeiTImageProcessorPil,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessorPil,
    )

    if kind == "vit":
        model = ViTForImageClassification(ViTConfig(image_size=image_size, **TINY))
    elif kind == "deit":
        model = DeiTForImageClassification(DeiTConfig(image_size=image_size, **TINY))
    else:
        model = DeiTForImageClassificationWithTeacher(DeiTConfig(image_size=image_size, **TINY))
    _randomize(model, seed).save_pretrained(folder)
    if processor:
        (ViTImageProcessorPil() if kind == "vit" else DeiTImageProcessorPil()).save_pretrained(folder)
    return model


def _pixels(size=224, batch=2, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _logits(model, pixels, **kwargs):
    with torch.no_grad():
        return model(pixels, **kwargs).logits


# -------------------------------------------------------------------------------------------------- ViT
def test_vit_with_uniform_scorer_reproduces_the_source_logits(tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    source = _save_vit(tmp_path / "vit")
    code = cli.main(["--source", str(tmp_path / "vit"), "--output_dir", str(tmp_path / "dart"), "--verify"])
    out = capsys.readouterr().out
    assert code == 0 and "verified" in out
    report = json.loads(out[out.index("{"): out.rindex("}") + 1])
    assert report["exact"] and report["dropped"] == {} and report["scorer"] == "uniform"
    dart = AutoModelForImageClassification.from_pretrained(tmp_path / "dart").eval()
    assert dart.config.model_type == "dart" and dart.config.num_tokens == 196 and dart.config.image_size == 224
    assert dart.config.layer_norm_eps == 1e-12 and dart.config.id2label == source.config.id2label
    pixels = _pixels()
    expected = _logits(source, pixels)
    assert expected.abs().max() > 1  # the weights make a difference
    torch.testing.assert_close(_logits(dart, pixels), expected, atol=1e-5, rtol=0)
    # the fused projection is q, k, v of the source stacked
    attention = source.vit.layers[1].attention
    qkv = dart.dart.encoder.layer[1].attention.qkv.weight
    assert torch.equal(qkv, torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]))
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_dart.py"):
        assert (tmp_path / "dart" / name).is_file(), name


def test_class_method_takes_a_loaded_model_and_a_folder(tmp_path):
    source = _save_vit(tmp_path / "vit", seed=3)
    pixels = _pixels(seed=4)
    for given in (source, str(tmp_path / "vit")):
        dart = DartForImageClassification.from_pretrained_backbone(given)
        torch.testing.assert_close(_logits(dart, pixels), _logits(source, pixels), atol=1e-5, rtol=0)
        assert dart.conversion_report["architecture"] == "ViTForImageClassification"


def test_source_processor_settings_carry_over(tmp_path, photo):
    from transformers import DeiTImageProcessorPil, ViTImageProcessorPil

    _save_vit(tmp_path / "vit")
    _save_vit(tmp_path / "deit", kind="deit")
    for folder, reference in (("vit", ViTImageProcessorPil()), ("deit", DeiTImageProcessorPil())):
        _, processor, _ = cli.convert(str(tmp_path / folder))
        ours = processor(photo, return_tensors="pt")["pixel_values"]
        theirs = torch.as_tensor(reference(photo, return_tensors="pt")["pixel_values"])
        assert ours.shape == theirs.shape == (1, 3, 224, 224)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # at DART's 448 input the DeiT crop ratio is kept: 256 -> 224 becomes 512 -> 448
    _, processor, _ = cli.convert(str(tmp_path / "deit"), image_size=448, score_grid_size=14)
    assert processor.size == {"height": 512, "width": 512} and processor.crop_size == {"height": 448, "width": 448}
    assert list(processor.image_mean) == [0.5, 0.5, 0.5]


# ------------------------------------------------------------------------------------------------- DeiT
def _reference_vit_without_distillation_token(deit, head):
    """A Transformers ViT holding the DeiT's weights minus the distillation token: what we define the wrapped DeiT to
    compute (sequence [cls, patches]; one head)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(**{k: v for k, v in deit.config.to_dict().items() if k not in ("model_type", "architectures")})
    vit = ViTForImageClassification(config).eval()
    state = {}
    for key, tensor in deit.state_dict().items():
        if key == "deit.embeddings.distillation_token" or "classifier" in key:
            continue
        if key == "deit.embeddings.position_embeddings":
            tensor = torch.cat([tensor[:, :1], tensor[:, 2:]], dim=1)
        state["vit." + key.removeprefix("deit.")] = tensor
    state.update({f"classifier.{part}": tensor for part, tensor in head.items()})
    vit.load_state_dict(state, strict=True)
    return vit


@pytest.mark.parametrize("distillation_head", ["average", "cls"])
def test_deit_with_teacher_drops_the_distillation_token_and_merges_the_heads(tmp_path, distillation_head):
    teacher = _save_vit(tmp_path / "deit", kind="teacher", seed=5)
    model, _, report = cli.convert(str(tmp_path / "deit"), distillation_head=distillation_head)
    assert not report["exact"] and "deit.embeddings.distillation_token" in report["dropped"]
    assert report["distillation_head"] == distillation_head
    cls_head = teacher.cls_classifier.state_dict()
    dist_head = teacher.distillation_classifier.state_dict()
    if distillation_head == "average":
        head = {part: (cls_head[part] + dist_head[part]) / 2 for part in ("weight", "bias")}
    else:
        head = cls_head
        assert "distillation_classifier.weight" in report["dropped"]
    reference = _reference_vit_without_distillation_token(teacher, head)
    pixels = _pixels(seed=6)
    ours = _logits(model, pixels)
    torch.testing.assert_close(ours, _logits(reference, pixels), atol=1e-5, rtol=0)
    # and it is not the distilled model itself (its blocks attended to the distillation token): the report says so
    assert (ours - _logits(teacher, pixels)).abs().max() > 1e-2


def test_deit_without_teacher_uses_its_classifier(tmp_path):
    deit = _save_vit(tmp_path / "deit", kind="deit", seed=7)
    model, _, report = cli.convert(str(tmp_path / "deit"))
    assert report["distillation_head"] == "none" and not report["exact"]
    reference = _reference_vit_without_distillation_token(deit, deit.classifier.state_dict())
    pixels = _pixels(seed=8)
    torch.testing.assert_close(_logits(model, pixels), _logits(reference, pixels), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- other grids
def test_384_source_gets_its_position_table_resized_like_interpolate_pos_encoding(tmp_path):
    source = _save_vit(tmp_path / "vit384", image_size=384, seed=9)  # 24x24 grid
    dart = DartForImageClassification.from_pretrained_backbone(str(tmp_path / "vit384"), score_grid_size=14)
    report = dart.conversion_report
    assert report["source_grid"] == 24 and report["position_table_resized"] and not report["exact"]
    assert dart.config.image_size == 224 and dart.config.num_tokens == 196
    embeddings = source.vit.embeddings
    with torch.no_grad():
        expected = embeddings.interpolate_pos_encoding(torch.zeros(1, 197, 32), 224, 224)  # Transformers' own
    assert torch.equal(dart.dart.embeddings.position_embeddings, expected)
    pixels = _pixels(seed=10)
    with torch.no_grad():
        reference = source(pixels, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(_logits(dart, pixels), reference, atol=1e-5, rtol=0)


def test_resize_position_table_with_a_middle_cls_row():
    from transformers import ViTConfig
    from transformers.models.vit.modeling_vit import ViTEmbeddings

    table = torch.randn(1, 1 + 24 * 24, 8, generator=torch.Generator().manual_seed(0))
    middle = (24 * 24 + 1) // 2
    resized = resize_position_table(table, middle, 14)
    reference_module = ViTEmbeddings(ViTConfig(hidden_size=8, image_size=384, patch_size=16))
    with torch.no_grad():  # Transformers' interpolation on the same rows with the cls row first
        reference_module.position_embeddings.copy_(torch.cat([table[:, middle : middle + 1], table[:, :middle],
                                                              table[:, middle + 1 :]], dim=1))
        reference = reference_module.interpolate_pos_encoding(torch.zeros(1, 197, 8), 224, 224)
    new_middle = (14 * 14 + 1) // 2
    assert torch.equal(resized[:, new_middle], table[:, middle])
    assert torch.equal(torch.cat([resized[:, :new_middle], resized[:, new_middle + 1 :]], dim=1), reference[:, 1:])
    with pytest.raises(ValueError, match="1 \\+ g \\* g"):
        resize_position_table(torch.zeros(1, 11, 4), 0, 3)
    with pytest.raises(ValueError, match="new_grid"):
        resize_position_table(table, 0, 0)


# ---------------------------------------------------------------------------------------- learned scorer
def test_learned_scorer_with_random_trunk(tmp_path):
    source = _save_vit(tmp_path / "vit", seed=11)
    model, _, report = cli.convert(str(tmp_path / "vit"), scorer="learned", scorer_head="v1", image_size=448,
                                   score_grid_size=14)
    config = model.config
    assert config.scorer == "learned" and config.image_size == 448 and config.high_res
    assert config.freeze_scorer_trunk is False and "random" in report["scorer"] and not report["exact"]
    assert all(p.requires_grad for p in model.dart.embeddings.scorer.features.parameters())
    # the backbone is the source's, tensor by tensor
    assert torch.equal(model.dart.embeddings.projection.weight, source.vit.embeddings.patch_embeddings.projection.weight)
    assert torch.equal(model.classifier.bias, source.classifier.bias)
    assert torch.equal(model.dart.encoder.layernorm.weight, source.vit.layernorm.weight)
    logits = _logits(model, _pixels(448, seed=12))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_pretrained_trunk_weights_go_through_load_scorer_trunk_weights(tmp_path, monkeypatch):
    import modeling_dart

    calls = []

    def fake_loader(model, source):
        calls.append((type(model).__name__, source))
        return ["features.16.0.weight"]

    monkeypatch.setattr(modeling_dart, "load_scorer_trunk_weights", fake_loader, raising=False)
    _save_vit(tmp_path / "vit")
    model, _, report = cli.convert(str(tmp_path / "vit"), scorer="learned", scorer_trunk_weights="trunk.pth")
    assert calls == [("DartForImageClassification", "trunk.pth")]
    assert model.config.freeze_scorer_trunk is True and "from trunk.pth" in report["scorer"]
    assert report["trunk_keys_beyond_depth"] == 1

    def failing_loader(model, source):
        raise KeyError("Unexpected keys for a mobilenet_v3_small trunk: ['x']")

    monkeypatch.setattr(modeling_dart, "load_scorer_trunk_weights", failing_loader, raising=False)
    with pytest.raises(ConversionError, match="cannot load scorer trunk weights"):
        cli.convert(str(tmp_path / "vit"), scorer="learned", scorer_trunk_weights="trunk.pth")


# -------------------------------------------------------------------------------------------------- Vim
def _vim_checkpoint_without_scorer():
    folder = require_fixture("darvim_tiny_depth2.pth", "darvim_tiny_depth2_golden.safetensors")
    state = torch.load(folder / "darvim_tiny_depth2.pth", map_location="cpu", weights_only=True)["model"]
    return {k: v for k, v in state.items() if not k.startswith("patch_embed.spn.")}, folder


def test_vim_release_checkpoint_matches_the_original_backbone(tmp_path):
    state, folder = _vim_checkpoint_without_scorer()
    path = tmp_path / "vim_t.pth"
    torch.save({"model": state, "epoch": 299}, path)
    model, _, report = cli.convert(str(path))
    config = model.config
    assert config.backbone == "vim" and config.cls_token_position == "middle" and config.num_hidden_layers == 2
    assert config.scorer == "uniform" and config.image_size == 224 and report["exact"] and report["num_keys"] == len(state)
    converted = model.state_dict()
    for key, tensor in state.items():  # key by key
        new_key = {"patch_embed.proj.weight": "dart.embeddings.projection.weight",
                   "patch_embed.proj.bias": "dart.embeddings.projection.bias", "cls_token": "dart.embeddings.cls_token",
                   "pos_embed": "dart.embeddings.position_embeddings", "norm_f.weight": "dart.encoder.norm_f.weight",
                   "head.weight": "classifier.weight", "head.bias": "classifier.bias"}.get(key)
        new_key = new_key or "dart.encoder." + key
        assert torch.equal(converted[new_key], tensor), key
    # the backbone fed with the original code's stored embeddings gives the original's pooled output and logits
    golden = load_file(folder / "darvim_tiny_depth2_golden.safetensors")
    with torch.no_grad():
        sequence = model.dart.encoder(golden["img0.embeddings"])[0]
        pooled = sequence[:, 98]
        logits = model.classifier(pooled)
    torch.testing.assert_close(pooled, golden["img0.pooled"], atol=2e-5, rtol=0)
    torch.testing.assert_close(logits, golden["logits_single"][:1], atol=2e-5, rtol=0)
    # with the uniform scorer at 224 the embeddings are Vim's: patch grid + positions, cls token in the middle
    pixels = _pixels(seed=13, batch=1)
    with torch.no_grad():
        ours = model.dart.embeddings(pixels).embeddings
        patches = torch.nn.functional.conv2d(pixels, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"],
                                             stride=16).flatten(2).transpose(1, 2)
        sequence = torch.cat([patches[:, :98], state["cls_token"], patches[:, 98:]], dim=1) + state["pos_embed"]
    torch.testing.assert_close(ours, sequence, atol=1e-5, rtol=0)


def test_vim_model_ema_and_resized_grid(tmp_path):
    state, _ = _vim_checkpoint_without_scorer()
    ema = {k: (v + 1 if k == "head.bias" else v) for k, v in state.items()}
    path = tmp_path / "vim_t.pth"
    torch.save({"model": state, "model_ema": ema}, path)
    model, _, report = cli.convert(str(path), weights="model_ema", score_grid_size=10, num_tokens=64)
    assert torch.equal(model.classifier.bias, ema["head.bias"]) and report["weights"] == "model_ema"
    assert model.config.score_grid_size == 10 and model.config.image_size == 160 and report["position_table_resized"]
    table = model.dart.embeddings.position_embeddings
    assert table.shape == (1, 101, 192) and torch.equal(table[:, 50], state["pos_embed"][:, 98])
    assert model(_pixels(160, batch=1)).logits.shape == (1, 1000)


def test_full_size_vim_from_the_manifest_has_the_original_backbone_parameter_count(tmp_path):
    manifest_folder = require_fixture("manifest_darvim_tiny.json")
    manifest = json.loads((manifest_folder / "manifest_darvim_tiny.json").read_text())
    generator = torch.Generator().manual_seed(0)
    state = {entry["key"]: torch.randn(entry["shape"], generator=generator) * 0.02 for entry in manifest["state_dict"]
             if not entry["key"].startswith("patch_embed.spn.")}
    path = tmp_path / "vim_full.pth"
    torch.save({"model": state}, path)
    _, _, report = cli.convert(str(path))
    counts = manifest["param_counts"]
    assert report["depth"] == 24 and report["num_keys"] == len(state)
    assert report["num_parameters"] == counts["total"] - counts["spn"]


# ------------------------------------------------------------------------------------------------ refusals
def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_unsupported_architecture_is_refused(tmp_path, capsys):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=224, **{k: v for k, v in TINY.items() if k != "num_labels"})).save_pretrained(tmp_path / "m")
    code, err = _run(["--source", tmp_path / "m", "--output_dir", tmp_path / "out"], capsys)
    assert code == 2 and "ViTModel" in err and "supported" in err
    assert not (tmp_path / "out").exists()
    code, err = _run(["--source", tmp_path / "nothing-here", "--output_dir", tmp_path / "out"], capsys)
    assert code == 2 and "cannot read a Transformers config" in err


def test_missing_and_unexpected_tensors_in_a_folder_are_refused(tmp_path, capsys):
    _save_vit(tmp_path / "vit")
    weights = tmp_path / "vit" / "model.safetensors"
    original = load_file(weights)
    # Transformers writes the Hub's historical names (`vit.encoder.layer.N...`) and renames them on loading
    dropped = "vit.encoder.layer.1.output.dense.bias"
    assert dropped in original
    save_file({k: v for k, v in original.items() if k != dropped}, weights, metadata={"format": "pt"})
    code, err = _run(["--source", tmp_path / "vit", "--output_dir", tmp_path / "out"], capsys)
    assert code == 2 and "missing_keys" in err and "fc2.bias" in err
    save_file({**original, "vit.extra.weight": torch.zeros(2)}, weights, metadata={"format": "pt"})
    code, err = _run(["--source", tmp_path / "vit", "--output_dir", tmp_path / "out"], capsys)
    assert code == 2 and "unexpected_keys" in err and "extra" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mutation,message", [
    ("drop", "missing key"), ("extra", "unexpected key"), ("reshape", "mis-shaped key"),
    ("scorer", "darvim checkpoint"), ("no_cls", "cls token"),
])
def test_vim_key_problems_are_errors(tmp_path, capsys, mutation, message):
    state, folder = _vim_checkpoint_without_scorer()
    if mutation == "drop":
        del state["layers.1.mixer.dt_proj_b.bias"]
    elif mutation == "extra":
        state["layers.0.mixer.rope.freqs"] = torch.zeros(4)
    elif mutation == "reshape":
        state["layers.0.mixer.out_proj.weight"] = torch.zeros(192, 100)
    elif mutation == "scorer":
        state = torch.load(folder / "darvim_tiny_depth2.pth", map_location="cpu", weights_only=True)["model"]
    elif mutation == "no_cls":
        del state["cls_token"]
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    code, err = _run(["--source", path, "--output_dir", tmp_path / "out"], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_never_overwrites_without_the_flag(tmp_path, capsys):
    _save_vit(tmp_path / "vit")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = _run(["--source", tmp_path / "vit", "--output_dir", out], capsys)
    assert code == 2 and "--overwrite" in err and (out / "keep.txt").read_text() == "precious"
    code, err = _run(["--source", tmp_path / "vit", "--output_dir", out, "--overwrite"], capsys)
    assert code == 0, err
    # the converter replaces the files it writes and never deletes one it did not write (#24)
    assert (out / "keep.txt").read_text() == "precious" and (out / "model.safetensors").is_file()


def test_bad_options_name_the_argument(tmp_path, capsys):
    _save_vit(tmp_path / "vit")
    with pytest.raises(ValueError, match="`scorer`"):
        convert_backbone(str(tmp_path / "vit"), scorer="random")
    with pytest.raises(ValueError, match="scorer_trunk"):
        convert_backbone(str(tmp_path / "vit"), scorer_trunk="mobilenet_v3_large")  # uniform has no trunk
    with pytest.raises(ValueError, match="`distillation_head`"):
        convert_backbone(str(tmp_path / "vit"), distillation_head="both")
    with pytest.raises(ValueError, match="`score_grid_size`"):
        convert_backbone(str(tmp_path / "vit"), score_grid_size=0)
    with pytest.raises(ValueError, match="`image_size`"):
        convert_backbone(str(tmp_path / "vit"), image_size="224")
    code, err = _run(["--source", tmp_path / "vit", "--output_dir", tmp_path / "o", "--num_tokens", "100000"], capsys)
    assert code == 2 and "num_tokens" in err


def test_pretrained_trunk_weights_from_a_torchvision_style_file(tmp_path):
    """The real `load_scorer_trunk_weights`: a MobileNetV3-Small file in torchvision's `features.*` naming (built here
    with random values for the whole trunk) fills the kept entries of the scorer; the trunk is then frozen."""
    from modeling_dart.trunks_dart import ScorerTrunk

    full = ScorerTrunk("mobilenet_v3_small", 13).features
    generator = torch.Generator().manual_seed(0)
    state = {f"features.{key}": (torch.randn(value.shape, generator=generator) if value.is_floating_point() else value)
             for key, value in full.state_dict().items()}
    torch.save(state, tmp_path / "mobilenet_v3_small.pth")
    _save_vit(tmp_path / "vit")
    model, _, report = cli.convert(str(tmp_path / "vit"), scorer="learned", scorer_head="v1",
                                   scorer_trunk_weights=str(tmp_path / "mobilenet_v3_small.pth"))
    trunk = model.dart.embeddings.scorer.features.state_dict()
    assert trunk and all(torch.equal(tensor, state[f"features.{key}"]) for key, tensor in trunk.items())
    beyond = [key for key in state if int(key.split(".")[1]) >= 11]  # head v1 keeps 11 of the 13 entries
    assert report["trunk_keys_beyond_depth"] == len(beyond) > 0
    assert model.config.freeze_scorer_trunk is True
    assert not any(p.requires_grad for p in model.dart.embeddings.scorer.features.parameters())


def test_packaged_trunk_weights_bring_the_recommended_scorer(tmp_path, capsys):
    """`--scorer_trunk_weights efficientnet_lite0` alone: a learned scorer on that trunk, frozen, with the saliency
    head, the trunk holding the packaged weights; a chosen head or trunk, or `--scorer uniform`, stands."""
    from transformers import AutoConfig

    from tests.test_trunks import lite0_state

    _save_vit(tmp_path / "vit")
    code = cli.main(["--source", str(tmp_path / "vit"), "--output_dir", str(tmp_path / "dart"),
                     "--scorer_trunk_weights", "efficientnet_lite0"])
    assert code == 0, capsys.readouterr().err
    config = AutoConfig.from_pretrained(tmp_path / "dart")
    assert (config.scorer, config.scorer_trunk, config.scorer_head, config.freeze_scorer_trunk) == (
        "learned", "efficientnet_lite0", "saliency", True)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "dart" / "model.safetensors")
    assert torch.equal(saved["dart.embeddings.scorer.features.0.0.weight"], lite0_state()["_conv_stem.weight"])
    code = cli.main(["--source", str(tmp_path / "vit"), "--output_dir", str(tmp_path / "v2"),
                     "--scorer_trunk_weights", "efficientnet_lite0", "--scorer_head", "v2"])
    assert code == 0 and AutoConfig.from_pretrained(tmp_path / "v2").scorer_head == "v2"
    # a uniform scorer has no trunk to load: refused on one line, as before
    code, err = _run(["--source", tmp_path / "vit", "--output_dir", tmp_path / "uniform", "--scorer", "uniform",
                      "--scorer_trunk_weights", "efficientnet_lite0"], capsys)
    assert code == 2 and "scorer" in err and not (tmp_path / "uniform").exists()
