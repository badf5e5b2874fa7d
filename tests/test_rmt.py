"""RMT (VisRetNet) as a Transformers model family: presets, config checks, retention forms, parity with the original
(the reduced DARMT fixture's RMT fed with the stored warped images), the converter (key mapping, architecture read from
the checkpoint, relative-position buffer check), hidden states, backbone, Auto classes, save/load, remote code, UperNet,
torch.compile / torch.export.

Fixtures: ../shared/fixtures/original (or $DART_FIXTURES_DIR); tolerances from its README, section "RMT-L6 with DAIR"
(row "backbone only": stem and blocks 1e-4, pooled features and logits 2e-5).
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conversion.convert_rmt_original import (
    check_relative_position_buffers,
    convert,
    convert_rmt_key,
    convert_state_dict,
    infer_rmt_config,
    main,
    rmt_state_dict,
)
from modeling_dart import RmtBackbone, RmtConfig, RmtForImageClassification, RmtModel
from modeling_dart.conversion_utils import ConversionError, load_original_checkpoint
from modeling_dart.modeling_rmt import RmtRetention
from tests.conftest import require_fixture

CHECKPOINT = "darmt_l6_reduced.pth"
GOLDEN = "darmt_l6_reduced_golden.safetensors"
GOLDEN_JSON = "darmt_l6_reduced_golden.json"
MANIFEST = "manifest_rmt_l6.json"
ATOL_MAPS = 1e-4  # stem, blocks, merges (README: backbone only, stored img0.x -> img0.stem, img0.layers.*)
ATOL_POOLED = 2e-5  # pooled features and logits (README: backbone only -> img0.pooled, logits_single[0])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for this module: its models are small (the reduced fixture's goldens were made with one
    thread too), and two threads on a busy two-core machine spend most of their time waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> RmtConfig:
    kwargs = dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_heads=[2, 2, 3, 4], init_values=[2, 2, 2, 2],
                  heads_ranges=[4, 4, 6, 6], mlp_ratios=[2, 2, 2, 2], chunkwise_recurrents=[True, True, True, False],
                  layerscales=[False, False, True, True], projection=16, num_labels=5, drop_path_rate=0.0)
    kwargs.update(overrides)
    return RmtConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> RmtForImageClassification:
    torch.manual_seed(seed)
    model = RmtForImageClassification(tiny_config(**overrides)).eval()
    with torch.no_grad():  # layer scales of 1 and random norms: every branch matters
        for name, tensor in model.named_parameters():
            if name.endswith("layer_scale"):
                tensor.fill_(1.0)
    return model


def pixels(batch: int = 2, height: int = 64, width: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def _reduced():
    folder = require_fixture(CHECKPOINT, GOLDEN, GOLDEN_JSON)
    model, report = convert(folder / CHECKPOINT, rmt_only=True)
    golden = load_file(folder / GOLDEN)
    meta = json.loads((folder / GOLDEN_JSON).read_text())
    original = rmt_state_dict(load_original_checkpoint(folder / CHECKPOINT), rmt_only=True)
    return model, report, golden, meta, original


def reduced():
    require_fixture(CHECKPOINT, GOLDEN, GOLDEN_JSON)
    return _reduced()


# ------------------------------------------------------------------------------------------------ config, presets
RELEASE_FACTS = {  # the RMT release's factory functions RMT_T3 / RMT_S / RMT_M2 (classfication_release/RMT.py)
    "t3": dict(embed_dims=[64, 128, 256, 512], depths=[2, 2, 8, 2], num_heads=[4, 4, 8, 16], heads_ranges=[4, 4, 6, 6],
               mlp_ratios=[3, 3, 3, 3], chunkwise_recurrents=[True, True, False, False], layerscales=[False] * 4,
               drop_path_rate=0.1),
    "s": dict(embed_dims=[64, 128, 256, 512], depths=[3, 4, 18, 4], num_heads=[4, 4, 8, 16], heads_ranges=[4, 4, 6, 6],
              mlp_ratios=[4, 4, 3, 3], chunkwise_recurrents=[True, True, True, False], layerscales=[False] * 4,
              drop_path_rate=0.15),
    "m2": dict(embed_dims=[80, 160, 320, 512], depths=[4, 8, 25, 8], num_heads=[5, 5, 10, 16],
               heads_ranges=[5, 5, 6, 6], mlp_ratios=[4, 4, 3, 3], chunkwise_recurrents=[True, True, True, False],
               layerscales=[False, False, True, True], drop_path_rate=0.4),
}


@pytest.mark.parametrize("name", ["t3", "s", "m2"])
def test_presets_are_the_released_variants(name):
    config = RmtConfig.from_preset(f"RMT-{name.upper()}")
    for field, value in RELEASE_FACTS[name].items():
        assert getattr(config, field) == value, field
    assert config.init_values == [2, 2, 2, 2] and config.projection == 1024 and config.layer_init_values == 1e-6


def test_l6_preset_is_the_manifest_model():
    manifest = json.loads((require_fixture(MANIFEST) / MANIFEST).read_text())
    config = RmtConfig.from_preset("l6", num_labels=1000)
    for field, value in manifest["constructor_kwargs_effective"].items():
        assert getattr(config, field) == value, field
    assert config.key_dims() == manifest["config"]["rmt"]["key_dims"]
    assert config.ffn_dims() == manifest["config"]["rmt"]["ffn_dims"]
    with torch.device("meta"):
        model = RmtForImageClassification(config)
    assert sum(p.numel() for p in model.parameters()) == manifest["param_counts"]["total"] == 95_464_864
    # every manifest key maps onto the model (the 8 Relpos buffers are computed, not stored), shapes equal
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    mapped = {}
    for entry in manifest["state_dict"]:
        new = convert_rmt_key(entry["key"])
        if new is None:
            assert ".Relpos." in entry["key"]
            continue
        shape = tuple(entry["shape"])
        mapped[new] = (math.prod(shape),) if entry["key"].endswith(("gamma_1", "gamma_2")) else shape
    assert mapped == expected
    decays = [config.num_heads[i] for i in range(4)]
    relpos = [e for e in manifest["state_dict"] if ".Relpos." in e["key"]]
    assert len(relpos) == 8 and sum(math.prod(e["shape"]) for e in relpos) == sum(config.key_dims()) + sum(decays)
    from modeling_dart.modeling_rmt import rmt_relative_position_buffers

    for stage, tables in rmt_relative_position_buffers(config).items():
        stored = torch.tensor(manifest["config"]["rmt"]["decay_per_head"][stage])
        torch.testing.assert_close(tables["decay"], stored, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("overrides", "error", "field"),
    [
        (dict(embed_dims=[8, 16, 24]), ValueError, "per-stage"),
        (dict(num_heads=[2, 2, 3, 3]), ValueError, "embed_dims[3]"),  # 32 / 3 is not an integer
        (dict(depths=[1, 0, 2, 1]), ValueError, "depths"),
        (dict(heads_ranges=[4, 4, -6, 6]), ValueError, "heads_ranges"),
        (dict(chunkwise_recurrents=[1, 1, 1, 0]), TypeError, "chunkwise_recurrents"),
        (dict(layerscales="yes"), TypeError, "layerscales"),
        (dict(drop_path_rate=1.0), ValueError, "drop_path_rate"),
        (dict(projection=0), ValueError, "projection"),
        (dict(hidden_act="gleu"), ValueError, "hidden_act"),
        (dict(layer_norm_eps=float("nan")), ValueError, "layer_norm_eps"),
        (dict(out_features=["stage5"]), ValueError, "out_features"),
    ],
)
def test_config_refuses_bad_values_naming_the_field(overrides, error, field):
    with pytest.raises(error, match=field.replace("[", r"\[").replace("]", r"\]")):
        tiny_config(**overrides)


def test_config_refuses_odd_key_dims_and_unknown_presets():
    with pytest.raises(ValueError, match=r"embed_dims\[0\].*even"):
        tiny_config(num_heads=[8, 2, 3, 4])  # 8 / 8 = 1
    with pytest.raises(ValueError, match="name"):
        RmtConfig.from_preset("l7")
    with pytest.raises(TypeError, match="name"):
        RmtConfig.from_preset(6)
    with pytest.raises(TypeError, match="config"):
        RmtModel(config={"model_type": "rmt"})


def test_config_round_trip_keeps_every_field():
    config = tiny_config(out_features=["stage2", "stage4"])
    again = RmtConfig.from_dict(json.loads(config.to_json_string()))
    assert again.model_type == "rmt" and again.to_dict() == config.to_dict()
    assert again.out_features == ["stage2", "stage4"] and again.out_indices == [2, 4]
    assert again.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert again.hidden_sizes == [8, 16, 24, 32]


# ------------------------------------------------------------------------------------------------ retention forms
def _retention(decomposed: bool) -> RmtRetention:
    config = tiny_config(chunkwise_recurrents=[decomposed] * 4)
    torch.manual_seed(3)
    module = RmtRetention(config, 1).eval()
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return module


def _plain_inputs(module, height=5, width=4):
    x = torch.randn(2, height, width, module.num_heads * module.key_dim, generator=torch.Generator().manual_seed(4))
    sin = torch.zeros(height, width, module.key_dim)  # the identity rotation
    cos = torch.ones(height, width, module.key_dim)
    return x, sin, cos


def _heads(t, module):
    b, h, w, _ = t.shape
    return t.view(b, h, w, module.num_heads, module.key_dim).permute(0, 3, 1, 2, 4)


@pytest.mark.parametrize("decomposed", [True, False])
def test_retention_without_decay_is_softmax_attention(decomposed):
    """With zero decay masks and the identity rotation, the two forms are plain softmax attention (PyTorch's SDPA as
    the reference): over the whole map, or along each row then along each column."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    module = _retention(decomposed)
    x, sin, cos = _plain_inputs(module)
    b, height, width, channels = x.shape
    n = module.num_heads
    with torch.no_grad():
        q, k, v = (_heads(proj(x), module) for proj in (module.q_proj, module.k_proj, module.v_proj))
        if decomposed:
            masks = (torch.zeros(n, 1, height, height), torch.zeros(n, 1, width, width))
            rows = sdpa(q, k, v)  # (b, n, H, W, d): attention over W
            expected = sdpa(q.transpose(2, 3), k.transpose(2, 3), rows.transpose(2, 3)).permute(0, 3, 2, 1, 4)
        else:
            masks = (torch.zeros(n, height * width, height * width),)
            expected = sdpa(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3)).transpose(1, 2)
        lepe = module.lepe(module.v_proj(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        expected = module.out_proj(expected.reshape(b, height, width, channels) + lepe)
        torch.testing.assert_close(module(x, sin, cos, masks), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decomposed", [True, False])
def test_retention_with_overwhelming_decay_attends_to_itself(decomposed):
    module = _retention(decomposed)
    x, sin, cos = _plain_inputs(module)
    _, height, width, _ = x.shape
    n = module.num_heads
    rows, cols = torch.arange(height).repeat_interleave(width), torch.arange(width).repeat(height)

    def line(length):
        return -1e4 * (torch.arange(length)[:, None] - torch.arange(length)[None]).abs().float()

    if decomposed:
        masks = (line(height).expand(n, 1, height, height), line(width).expand(n, 1, width, width))
    else:
        distance = (rows[:, None] - rows[None]).abs() + (cols[:, None] - cols[None]).abs()
        masks = ((-1e4 * distance.float()).expand(n, -1, -1),)
    with torch.no_grad():
        v = module.v_proj(x)
        expected = module.out_proj(v + module.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        torch.testing.assert_close(module(x, sin, cos, masks), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------- parity with the original code
def test_architecture_is_read_from_the_checkpoint():
    model, report, _, meta, _ = reduced()
    config = model.config
    kwargs = meta["constructor_kwargs"]
    for field in ("embed_dims", "depths", "num_heads", "init_values", "heads_ranges", "mlp_ratios",
                  "chunkwise_recurrents", "layerscales"):
        assert getattr(config, field) == kwargs[field], field
    assert config.key_dims() == meta["key_dims"] and config.ffn_dims() == meta["ffn_dims"]
    assert config.projection == meta["constructor_defaults_in_effect"]["projection"]
    assert config.num_labels == meta["constructor_defaults_in_effect"]["num_classes"]
    counts = meta["param_counts"]
    assert report["num_parameters"] == counts["rmt_patch_embed"] + counts["rmt_layers"] + counts["rmt_head_proj_norm_head"]
    assert report["relative_position_buffers_checked_and_left_out"] == 2 * len(kwargs["depths"])


def test_converted_weights_equal_checkpoint_key_by_key():
    model, report, _, _, original = reduced()
    converted = model.state_dict()
    weights = {k: v for k, v in original.items() if ".Relpos." not in k}
    assert len(weights) == len(converted) == report["num_keys"]
    for key, tensor in weights.items():
        assert torch.equal(converted[convert_rmt_key(key)], tensor.reshape(converted[convert_rmt_key(key)].shape)), key


def _record(model):
    """Forward hooks on the stem, every block, every patch merging and the classifier's pre-head, named as the
    golden tensors (channels-last, as the original)."""
    captured, handles = {}, []

    def keep(name, channels_first):
        def hook(module, args, output):
            captured[name] = output.permute(0, 2, 3, 1) if channels_first else output
        return hook

    rmt = model.rmt
    handles.append(rmt.embeddings.register_forward_hook(keep("img0.stem", True)))
    for s, stage in enumerate(rmt.encoder.stages):
        for j, layer in enumerate(stage.layers):
            handles.append(layer.register_forward_hook(keep(f"img0.layers.{s}.blocks.{j}", False)))
        if stage.downsample is not None:  # the original's merge after stage s - 1
            handles.append(stage.downsample.register_forward_hook(keep(f"img0.layers.{s - 1}.downsample", True)))
    handles.append(model.feature_projection.register_forward_hook(keep("img0.pooled", False)))
    return captured, handles


def test_backbone_fed_with_stored_warped_image_matches_every_stage():
    model, _, golden, meta, _ = reduced()
    captured, handles = _record(model)
    try:
        with torch.no_grad():
            logits = model(golden["img0.x"]).logits
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name in golden if name.startswith(("img0.stem", "img0.layers."))]
    assert len(names) == 1 + sum(meta["depths"]) + len(meta["depths"]) - 1
    assert set(names) | {"img0.pooled"} == set(captured)
    report = {}
    for name in sorted(captured):
        atol = ATOL_POOLED if name == "img0.pooled" else ATOL_MAPS
        torch.testing.assert_close(captured[name], golden[name], atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
        report[name] = float((captured[name] - golden[name]).abs().max())
    torch.testing.assert_close(logits, golden["logits_single"][:1], atol=ATOL_POOLED, rtol=0)
    report["logits"] = float((logits - golden["logits_single"][:1]).abs().max())
    print(json.dumps(report, indent=1))


def test_backbone_fed_with_stored_batch_reproduces_batch_logits():
    model, _, golden, _, _ = reduced()
    captured, handles = _record(model)
    try:
        with torch.no_grad():
            logits = model(golden["batch.x"]).logits
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(captured["img0.pooled"], golden["batch.pooled"], atol=ATOL_POOLED, rtol=0)
    torch.testing.assert_close(logits, golden["logits_batch"], atol=ATOL_POOLED, rtol=0)
    assert logits.argmax(-1).tolist() == reduced()[3]["argmax_batch"]


# ------------------------------------------------------------------------------------------------------ converter
def test_relative_position_buffers_are_checked_then_left_out():
    model, _, _, _, original = reduced()
    checked = check_relative_position_buffers(original, model.config)
    assert sorted(checked) == sorted(k for k in original if ".Relpos." in k) and len(checked) == 8
    assert not any("Relpos" in key or "angle" in key or "decay" in key for key in model.state_dict())
    for key, factor in (("layers.2.Relpos.decay", 1.001), ("layers.0.Relpos.angle", 0.999)):
        tampered = dict(original)
        tampered[key] = original[key] * factor
        with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
            check_relative_position_buffers(tampered, model.config)
    wrong = RmtConfig(**{**model.config.to_dict(), "heads_ranges": [6, 6, 5, 6], "out_indices": None})
    with pytest.raises(ConversionError, match=r"layers\.2\.Relpos\.decay.*heads_ranges\[2\]=5"):
        check_relative_position_buffers(original, wrong)
    short = dict(original)
    short["layers.3.Relpos.decay"] = original["layers.3.Relpos.decay"][:5]
    with pytest.raises(ConversionError, match=r"layers\.3\.Relpos\.decay has shape"):
        check_relative_position_buffers(short, model.config)
    # a stage whose angles are not stored cannot be checked: the checkpoint is incomplete (the decays are needed to
    # read the heads, so their absence already fails in `infer_rmt_config`)
    no_angles = {k: v for k, v in original.items() if k != "layers.1.Relpos.angle"}
    with pytest.raises(ConversionError, match=r"missing key 'layers\.1\.Relpos\.angle'"):
        check_relative_position_buffers(no_angles, model.config)
    with pytest.raises(ConversionError, match=r"missing key 'layers\.1\.Relpos\.angle'"):
        convert_state_dict(no_angles, model)


def test_every_key_mapped_or_an_error(tmp_path):
    model, _, _, _, original = reduced()
    with pytest.raises(ConversionError, match="layers.0.blocks.0.retention.g_proj.weight"):
        convert_state_dict({**original, "layers.0.blocks.0.retention.g_proj.weight": torch.zeros(1)}, model)
    missing = {k: v for k, v in original.items() if k != "layers.1.blocks.0.ffn.dwconv.conv.bias"}
    with pytest.raises(ConversionError, match="missing key"):
        convert_state_dict(missing, model)
    with pytest.raises(ConversionError, match="pre_image"):
        convert_rmt_key("pre_image.spn.spn.spn.mlp.net.0.weight")
    full = load_original_checkpoint(require_fixture(CHECKPOINT) / CHECKPOINT)
    with pytest.raises(ConversionError, match="darmt_l6"):
        rmt_state_dict(full)
    no_heads = {k: v for k, v in original.items() if k != "layers.1.Relpos.decay"}
    with pytest.raises(ConversionError, match=r"layers\.1\.Relpos\.decay"):
        infer_rmt_config(no_heads)
    # decays that give no valid config name their buffer: in reverse head order (a negative heads range), and one
    # decay short (5 heads do not divide the stage's width 192 into even key dimensions)
    for key, decay in (("layers.2.Relpos.decay", original["layers.2.Relpos.decay"].flip(0)),
                       ("layers.3.Relpos.decay", original["layers.3.Relpos.decay"][:5])):
        with pytest.raises(ConversionError, match=re.escape(key)):
            infer_rmt_config({**original, key: decay})


def test_a_dart_vit_or_vim_checkpoint_is_refused_naming_its_converter(tmp_path, capsys):
    """Checkpoints of the other families, given to the RMT converter: one error line that says what the file is and
    names the converter that takes it; nothing is written. (A Vim file has `layers.{i}.*` keys too, and was
    reported as an RMT stage without blocks.)"""
    common = {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "cls_token": torch.zeros(1, 1, 8),
              "head.weight": torch.zeros(4, 8)}
    vim = {**common, "layers.0.mixer.in_proj.weight": torch.zeros(32, 8), "layers.0.norm.weight": torch.ones(8)}
    deit = {**common, "blocks.0.attn.qkv.weight": torch.zeros(24, 8), "norm.weight": torch.ones(8)}
    token_vim = {**vim, "patch_embed.spn.spn.spn.mlp.net.0.weight": torch.zeros(8, 16)}
    for state, kind, converter in ((vim, "Vision Mamba", "convert_vit_to_dart.py"),
                                   (deit, "ViT/DeiT", "convert_vit_to_dart.py"),
                                   (token_vim, "token DART", "convert_dart_original.py")):
        path = tmp_path / "other.pth"
        torch.save({"model": state}, path)
        assert main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and kind in err and converter in err, err
        assert not (tmp_path / "out").exists()


def test_converter_command_writes_a_loadable_folder(tmp_path, capsys):
    folder = require_fixture(CHECKPOINT)
    out = tmp_path / "rmt"
    assert main(["--checkpoint", str(folder / CHECKPOINT), "--output_dir", str(out)]) == 2  # a DARMT file
    assert "darmt_l6" in capsys.readouterr().err and not out.exists()
    assert main(["--checkpoint", str(folder / CHECKPOINT), "--output_dir", str(out), "--rmt_only", "--verify"]) == 0
    _, _, golden, _, _ = reduced()
    loaded = RmtForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(golden["img0.x"]).logits, golden["logits_single"][:1], atol=ATOL_POOLED,
                                   rtol=0)
    assert loaded.config.id2label[0] != "LABEL_0"  # ImageNet labels for 1000 classes


# ------------------------------------------------------------------------------- outputs, backbone, Auto classes
def test_hidden_states_are_channels_first_per_stage():
    model = tiny_model()
    with torch.no_grad():
        out = model.rmt(pixels(), output_hidden_states=True)
        tupled = model.rmt(pixels(), output_hidden_states=True, return_dict=False)
    shapes = [tuple(h.shape) for h in out.hidden_states]
    assert shapes == [(2, 8, 16, 12), (2, 8, 16, 12), (2, 16, 8, 6), (2, 24, 4, 3), (2, 32, 2, 2)]
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.mean(dim=(2, 3)))
    assert torch.equal(tupled[0], out.last_hidden_state) and len(tupled[2]) == 5
    assert model.rmt(pixels()).hidden_states is None
    classified = model(pixels(), output_hidden_states=True)
    assert len(classified.hidden_states) == 5 and classified.logits.shape == (2, 5)


def test_backbone_returns_the_stage_maps_channels_first():
    from transformers import AutoBackbone

    model = tiny_model()
    config = tiny_config(out_features=["stage1", "stage2", "stage3", "stage4"])
    backbone = AutoBackbone.from_config(config).eval()
    assert isinstance(backbone, RmtBackbone) and backbone.channels == [8, 16, 24, 32]
    backbone.load_state_dict(model.rmt.state_dict())
    with torch.no_grad():
        maps = backbone(pixels(height=40, width=72)).feature_maps
        hidden = model.rmt(pixels(height=40, width=72), output_hidden_states=True).hidden_states
    assert [tuple(m.shape) for m in maps] == [(2, 8, 10, 18), (2, 16, 5, 9), (2, 24, 3, 5), (2, 32, 2, 3)]
    for feature, state in zip(maps, hidden[1:]):
        assert torch.equal(feature, state)
    default = AutoBackbone.from_config(tiny_config())
    assert default.out_features == ["stage4"] and default.channels == [32]


def test_auto_classes_and_save_load_round_trip(tmp_path):
    from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

    assert type(AutoConfig.for_model("rmt")) is RmtConfig
    assert type(AutoModel.from_config(tiny_config())) is RmtModel
    model = tiny_model()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "rmt"
    assert set(saved["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoBackbone"}
    assert (tmp_path / "modeling_rmt.py").is_file() and (tmp_path / "configuration_rmt.py").is_file()
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is RmtForImageClassification
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels()).logits, model(pixels()).logits, atol=1e-6, rtol=0)
    # Transformers 5.25's `AutoBackbone.from_pretrained` asks the Hub whether a local folder exists and refuses it (for
    # its own backbones too); the class loads the folder, `AutoBackbone.from_config` picks the class
    backbone = RmtBackbone.from_pretrained(tmp_path, out_features=["stage2", "stage3"])
    assert type(AutoBackbone.from_config(backbone.config)) is RmtBackbone and backbone.out_features == ["stage2", "stage3"]
    for key, value in backbone.state_dict().items():
        assert torch.equal(model.rmt.state_dict()[key], value), key


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_dart"] = None  # the package is NOT importable here
    import json, torch
    from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification
    folder = sys.argv[1]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    backbone = AutoBackbone.from_config(AutoConfig.from_pretrained(folder, trust_remote_code=True),
                                        trust_remote_code=True)
    with torch.no_grad():
        logits = model(torch.load(sys.argv[2])).logits
    print(json.dumps({"module": type(model).__module__, "base": type(base).__name__, "backbone": type(backbone).__name__,
                      "logits": logits.tolist()}))
    """
)


def test_remote_code_loads_without_the_package(tmp_path):
    folder = tmp_path / "model"
    model = tiny_model()
    model.save_pretrained(folder)
    torch.save(pixels(), tmp_path / "x.pt")
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)
    result = subprocess.run([sys.executable, str(tmp_path / "remote.py"), str(folder), str(tmp_path / "x.pt")],
                            check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert "modeling_dart" not in answer["module"] and answer["backbone"] == "RmtBackbone"
    assert answer["base"] == "RmtModel"
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(answer["logits"]), model(pixels()).logits, atol=1e-5, rtol=0)


def test_upernet_takes_an_rmt_backbone_config():
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    backbone_config = tiny_config(out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone_config, hidden_size=16, auxiliary_channels=8, num_labels=3)
    model = UperNetForSemanticSegmentation(config).eval()
    assert type(model.backbone) is RmtBackbone
    with torch.no_grad():
        logits = model(pixel_values=pixels(height=64, width=64)).logits
    assert logits.shape == (2, 3, 64, 64) and torch.isfinite(logits).all()
    again = UperNetConfig.from_dict(json.loads(config.to_json_string()))
    assert type(again.backbone_config) is RmtConfig and again.backbone_config.out_indices == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------- compile, training, inputs
def test_compile_fullgraph_and_export_match_eager():
    # two stages (decomposed retention without layer scale, whole-map retention with it) keep the tracing short
    model = tiny_model(embed_dims=[8, 16], depths=[1, 1], num_heads=[2, 2], init_values=[2, 2], heads_ranges=[4, 6],
                       mlp_ratios=[2, 2], chunkwise_recurrents=[True, False], layerscales=[False, True])
    x = pixels(height=32, width=24)
    with torch.no_grad():
        expected = model(x).logits
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x).logits, expected, atol=1e-6, rtol=0)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x).logits, expected, atol=1e-6, rtol=0)


def test_training_step_reaches_every_parameter():
    model = tiny_model(drop_path_rate=0.2).train()
    model.activation_checkpointing_enable()
    out = model(pixels(batch=4), labels=torch.tensor([0, 1, 2, 4]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name


def test_every_parameter_and_buffer_is_initialised():
    model = tiny_model()
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.fill_(float("nan") if tensor.is_floating_point() else 7)
    model.apply(model._init_weights)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
        else:
            assert (tensor == 0).all(), name
    assert (model.rmt.encoder.stages[2].layers[0].retention_layer_scale == 1e-6).all()
    assert (model.rmt.embeddings.norm1.running_var == 1).all()


def test_bad_pixel_values_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="pixel_values"):
        model(None)
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match="pixel_values"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="pixel_values"):
        RmtBackbone(tiny_config())(pixel_values=[[0.0]])

