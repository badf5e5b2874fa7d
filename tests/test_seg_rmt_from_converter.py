"""A UperNet-RMT segmenter whose backbone comes from the RMT converter (#26.3): the reduced DARMT-L6 fixture's RMT
part converted to a folder, loaded as an `RmtBackbone`, placed in UperNet behind the reshaper."""

from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT, require_fixture

sys.path.insert(0, str(REPO_ROOT / "conversion"))

CHECKPOINT = "darmt_l6_reduced.pth"
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def test_upernet_rmt_backbone_from_converted_weights(tmp_path):
    import convert_rmt_original
    from transformers import UperNetConfig

    from modeling_dart import (
        DartReshaperConfig,
        DartReshaperForSemanticSegmentation,
        RmtBackbone,
    )

    checkpoint = require_fixture(CHECKPOINT) / CHECKPOINT
    folder = tmp_path / "rmt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: two threads on a busy two-core machine wait for each other
    try:
        code = convert_rmt_original.main(["--checkpoint", str(checkpoint), "--output_dir", str(folder), "--rmt_only"])
        assert code == 0
        converted = load_file(folder / "model.safetensors")
        backbone = RmtBackbone.from_pretrained(folder, out_features=STAGES)
        segmentation = UperNetConfig(backbone_config=backbone.config, hidden_size=16, auxiliary_channels=8,
                                     pool_scales=[1, 2], num_labels=3)
        config = DartReshaperConfig(backbone_config=segmentation, image_size=64, patch_size=8, score_grid_size=4,
                                    scorer="uniform")
        torch.manual_seed(0)
        model = DartReshaperForSemanticSegmentation(config).eval()
        model.backbone.backbone.load_state_dict(backbone.state_dict())

        # every RMT tensor of the converted folder (the classification head aside) is in the segmenter's backbone
        inside = model.backbone.backbone.state_dict()
        rmt_keys = {key.removeprefix("rmt."): tensor for key, tensor in converted.items() if key.startswith("rmt.")}
        assert rmt_keys and set(rmt_keys) == set(inside)
        for key, tensor in rmt_keys.items():
            assert torch.equal(inside[key], tensor), key
        assert {key.split(".")[0] for key in converted} == {"rmt", "feature_projection", "classifier"}

        pixels = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = model(pixel_values=pixels).logits
    finally:
        torch.set_num_threads(threads)
    assert logits.shape == (2, 3, 64, 96)
    assert torch.isfinite(logits).all()
