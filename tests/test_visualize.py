"""Token-region pictures (`modeling_dart.visualize`): exact pieces, score overlay, the model+processor helper, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_dart import DartConfig, DartForImageClassification, DartImageProcessor
from modeling_dart.visualize import draw_token_regions, make_grid, render_token_regions, token_geometry

REPO_ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAGENTA = (255, 0, 255)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.astronaut())  # 512x512 RGB, a real photo (public domain, NASA)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = DartConfig(
        image_size=64, patch_size=8, score_grid_size=4, num_tokens=16, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_labels=3, id2label={0: "cat", 1: "person", 2: "rocket"},
        label2id={"cat": 0, "person": 1, "rocket": 2},
    )
    model = DartForImageClassification(config).eval()
    # A random scorer head gives a nearly flat score map; a larger last layer makes the partition visibly uneven.
    with torch.no_grad():
        model.dart.embeddings.scorer.head.fc2.weight.mul_(50)
    folder = tmp_path_factory.mktemp("tiny_dart")
    model.save_pretrained(folder)
    DartImageProcessor(size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_and_processor(tiny_folder):
    model = DartForImageClassification.from_pretrained(tiny_folder).eval()
    processor = DartImageProcessor.from_pretrained(tiny_folder)
    return model, processor


def _outputs(model, processor, image, num_tokens=None):
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model.dart(pixel_values, num_tokens=num_tokens), pixel_values


def test_pieces_tile_the_input(model_and_processor, astronaut):
    model, processor = model_and_processor
    outputs, pixel_values = _outputs(model, processor, astronaut, num_tokens=11)  # 11 tokens in 3 rows: straddling
    geometry = token_geometry(outputs)
    assert geometry["exact"] and geometry["num_tokens"] == 11
    assert geometry["input_size"] == tuple(pixel_values.shape[-2:]) == (64, 64)
    pieces = geometry["pieces"]
    assert {n for n, *_ in pieces} == set(range(11))
    assert len(pieces) > 11  # some token straddles the end of a row and the start of the next
    area = sum((x1 - x0) * (y1 - y0) for _, x0, y0, x1, y1 in pieces)
    assert area == pytest.approx(64 * 64, rel=1e-5)
    # the widest piece of each token is the box reported in `regions`
    for n, box in enumerate(outputs.regions[0].tolist()):
        widest = max((p for p in pieces if p[0] == n), key=lambda p: p[3] - p[1])
        assert widest[1:] == pytest.approx(tuple(box), abs=1e-4)


def test_draw_exact_regions_on_a_photo(model_and_processor, astronaut, tmp_path):
    model, processor = model_and_processor
    outputs, _ = _outputs(model, processor, astronaut)
    crop = astronaut.resize((64, 64))
    picture = draw_token_regions(crop, outputs, line_color=MAGENTA, line_width=1, display_size=256)
    path = tmp_path / "regions.png"
    picture.save(path)

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    reloaded = Image.open(path)
    assert reloaded.format == "PNG" and reloaded.size == (256, 256) and reloaded.mode == "RGB"
    array = np.asarray(reloaded).astype(int)
    assert array.std() > 20  # not blank

    # every piece's top-left corner and the middle of its top edge carry the outline colour (scale 256 / 64 = 4)
    is_line = np.all(array == MAGENTA, axis=-1)
    pieces = token_geometry(outputs)["pieces"]
    for _, x0, y0, x1, y1 in pieces:
        if x1 - x0 < 0.5:
            continue
        top, left, mid = round(y0 * 4), round(x0 * 4), round((x0 + x1) / 2 * 4)
        assert is_line[top, left] and is_line[top, min(mid, 255)]
    # the regions are uneven (fine and coarse tokens), and the picture is mostly photo, not lines
    widths = [x1 - x0 for _, x0, _, x1, _ in pieces if x1 - x0 > 0.5]
    assert max(widths) > 1.5 * min(widths)
    assert 0.02 < is_line.mean() < 0.5


def test_draw_with_a_model_runs_it(model_and_processor, astronaut):
    model, processor = model_and_processor
    outputs, pixel_values = _outputs(model, processor, astronaut, num_tokens=9)
    crop = astronaut.resize((64, 64))
    from_outputs = np.asarray(draw_token_regions(crop, outputs, display_size=128))
    from_model = np.asarray(draw_token_regions(crop, model, pixel_values=pixel_values, num_tokens=9, display_size=128))
    assert np.array_equal(from_outputs, from_model)
    with pytest.raises(ValueError, match="pixel_values"):
        draw_token_regions(crop, model)


def test_score_overlay_changes_the_picture(model_and_processor, astronaut):
    model, processor = model_and_processor
    outputs, _ = _outputs(model, processor, astronaut)
    crop = astronaut.resize((64, 64))
    plain = np.asarray(draw_token_regions(crop, outputs, display_size=128)).astype(int)
    heat = np.asarray(draw_token_regions(crop, outputs, display_size=128, show_scores=True)).astype(int)
    assert plain.shape == heat.shape == (128, 128, 3)
    assert np.abs(plain - heat).mean() > 5


def test_render_helper_maps_boxes_onto_the_crop(model_and_processor, astronaut):
    model, processor = model_and_processor
    picture = render_token_regions(model, processor, astronaut, display_size=192, show_prediction=False,
                                   line_color=MAGENTA)
    assert picture.size == (192, 192)
    captioned = render_token_regions(model, processor, astronaut, num_tokens=9, show_scores=True, display_size=192)
    assert captioned.width == 192 and captioned.height > 192  # caption band on top
    # a non-square photo: the processor resizes the shorter side and centre-crops; the picture shows that crop
    wide = astronaut.crop((0, 100, 512, 356))  # 512x256
    picture = render_token_regions(model, processor, wide, display_size=64, show_prediction=False, line_color=MAGENTA)
    expected = processor(wide, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
    expected = np.moveaxis(np.asarray(expected), 0, -1)
    array = np.asarray(picture).astype(float)
    photo = ~np.all(array == MAGENTA, axis=-1)
    assert np.abs(array[photo] - expected[photo]).max() <= 1.0


def test_classifier_output_is_exact_and_boxes_alone_fall_back(model_and_processor, astronaut):
    model, processor = model_and_processor
    pixel_values = processor(astronaut, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = model(pixel_values)
        base = model.dart(pixel_values)
    geometry = token_geometry(output)  # the classifier output carries the edges too
    assert geometry["exact"] and geometry["pieces"] == token_geometry(base)["pieces"]
    boxes_only = {"regions": output.regions, "score_map": output.score_map}
    geometry = token_geometry(boxes_only)
    assert not geometry["exact"] and len(geometry["pieces"]) == 16
    assert draw_token_regions(astronaut.resize((64, 64)), boxes_only).size == (64, 64)
    assert draw_token_regions(astronaut.resize((64, 64)), output).size == (64, 64)
    with pytest.raises(ValueError, match="row_edges"):
        token_geometry({"score_map": output.score_map})


def test_make_grid():
    tiles = [Image.new("RGB", (10, 12), (i * 40, 0, 0)) for i in range(5)]
    grid = make_grid(tiles, columns=3, pad=2)
    assert grid.size == (3 * 10 + 4 * 2, 2 * 12 + 3 * 2)


def test_cli_writes_a_grid(tiny_folder, astronaut, tmp_path):
    first, second = tmp_path / "astronaut.png", tmp_path / "chelsea.jpg"
    astronaut.save(first)
    Image.open(REPO_ROOT / "conversion" / "assets" / "chelsea.jpg").save(second)
    out = tmp_path / "grid.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
           "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-m", "modeling_dart.visualize", "--model", str(tiny_folder), str(first), str(second),
         "--out", str(out), "--num_tokens", "9", "--scores", "--display_size", "160"],
        check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote" in result.stdout
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    grid = Image.open(out)
    assert grid.width == 2 * 160 + 3 * 4  # two pictures side by side, 4 px padding
    assert grid.height > 160
    assert np.asarray(grid).std() > 20
