"""Token-region pictures (`modeling_dart.visualize`): exact pieces, score overlay, the model+processor helper, the CLI;
and the image reshaper's picture (the warped grid on the input, the warped image beside it)."""

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
from modeling_dart.visualize import (
    draw_reshaper_warp,
    draw_token_regions,
    draw_warped_grid,
    main,
    make_grid,
    render_token_regions,
    token_geometry,
)

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


# ---------------------------------------------------------------------------------------------- the image reshaper
# A hand-made warp of a 32x48 input: 4 row bands and 3 column bands of 8-pixel warped cells (warped image 32x24).
ROW_EDGES = [0.0, 6.3, 10.0, 20.0, 32.0]
COL_EDGES = [0.0, 20.0, 30.0, 48.0]
GREY = (100, 100, 100)


def hand_made_warp(warped=None):
    warped = torch.zeros(1, 3, 32, 24) if warped is None else warped
    return {"row_edges": torch.tensor([ROW_EDGES]), "col_edges": torch.tensor([COL_EDGES]),
            "warped_pixel_values": warped, "score_map": torch.ones(1, 4, 4)}


def full_lines(array, color):
    """Rows and columns of `array` wholly in `color`, and the mask of that colour."""
    is_line = np.all(array == color, axis=-1)
    return np.flatnonzero(is_line.all(axis=1)).tolist(), np.flatnonzero(is_line.all(axis=0)).tolist(), is_line


def test_warped_grid_lines_sit_on_the_edges():
    """Displayed at twice the input size, row edge e is a horizontal line on pixel row round(2 e) and column edge e a
    vertical line on pixel column round(2 e); the last edges (the input's border) on the last row / column. Nothing
    else is drawn."""
    image = Image.new("RGB", (48, 32), GREY)
    picture = draw_warped_grid(image, hand_made_warp(), display_size=96, line_width=1, line_color=MAGENTA)
    assert picture.size == (96, 64)
    array = np.asarray(picture)
    rows, cols, is_line = full_lines(array, MAGENTA)
    assert rows == [0, 13, 20, 40, 63]  # 2 * 6.3 = 12.6 -> 13
    assert cols == [0, 40, 60, 95]
    expected = np.zeros((64, 96), dtype=bool)
    expected[rows, :] = True
    expected[:, cols] = True
    assert np.array_equal(is_line, expected)
    assert np.all(array[~is_line] == GREY)
    # a 3-pixel line is centred on the 1-pixel one, and stays inside the picture at the borders
    rows, cols, _ = full_lines(np.asarray(draw_warped_grid(image, hand_made_warp(), display_size=96, line_width=3,
                                                           line_color=MAGENTA)), MAGENTA)
    assert rows == [0, 1, 2, 12, 13, 14, 19, 20, 21, 39, 40, 41, 61, 62, 63]
    assert cols == [0, 1, 2, 39, 40, 41, 59, 60, 61, 93, 94, 95]


def test_warped_image_panel_is_the_denormalised_warp():
    """Beside the input, the warped pixels undone with the processor's mean / std and rescale factor (rounded,
    clipped to 0..255), each warped pixel a 2x2 block at the input picture's height; white padding between."""
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    target = np.random.default_rng(0).integers(0, 256, size=(32, 24, 3))
    warped = (target / 255.0 - mean) / std  # exact uint8 values after de-normalisation
    warped[0, 0] = 50.0  # far above white: clipped to 255
    warped[0, 1] = -50.0  # far below black: clipped to 0
    expected = target.copy()
    expected[0, 0], expected[0, 1] = 255, 0
    outputs = hand_made_warp(torch.tensor(warped.transpose(2, 0, 1)[None], dtype=torch.float32))
    picture = draw_reshaper_warp(Image.new("RGB", (48, 32), GREY), outputs, image_mean=mean.tolist(),
                                 image_std=std.tolist(), rescale_factor=1 / 255, pad=4, display_size=96)
    assert picture.size == (96 + 4 + 48, 64)
    array = np.asarray(picture).astype(int)
    assert np.all(array[:, 96:100] == 255)
    assert np.array_equal(array[:, 100:], np.repeat(np.repeat(expected, 2, axis=0), 2, axis=1))
    with pytest.raises(ValueError, match="warped_pixel_values"):
        draw_reshaper_warp(Image.new("RGB", (48, 32)), {k: v for k, v in outputs.items() if k != "warped_pixel_values"})
    with pytest.raises(ValueError, match="draw_reshaper_warp"):  # a reshaper output given to the token picture
        draw_token_regions(Image.new("RGB", (48, 32)), outputs)


@pytest.fixture(scope="module")
def tiny_reshaper_folder(tmp_path_factory) -> Path:
    """A saved reshaper classifier: 64x64 inputs warped to 32x32 by the uniform scorer (edges every 16 input pixels,
    the warped image every other input pixel), a tiny ConvNeXt behind it."""
    from transformers import ConvNextConfig

    from modeling_dart import DartReshaperConfig, DartReshaperForImageClassification

    backbone = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                              id2label={0: "cat", 1: "person", 2: "rocket"})
    config = DartReshaperConfig(backbone_config=backbone, image_size=64, patch_size=8, score_grid_size=4,
                                scorer="uniform")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_reshaper")
    DartReshaperForImageClassification(config).save_pretrained(folder)
    DartImageProcessor(size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def test_cli_draws_the_warp_of_a_reshaper_model(tiny_reshaper_folder, astronaut, tmp_path, capsys):
    image, out = tmp_path / "astronaut.png", tmp_path / "warp.png"
    astronaut.save(image)
    picture = main(["--model", str(tiny_reshaper_folder), str(image), "--out", str(out), "--display_size", "128"])
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(picture))
    band = picture.height - 128  # the caption band on top
    assert picture.width == 128 + 4 + 128 and band > 0  # the input and the warped image, each 128 pixels high
    array = np.asarray(picture)[band:].astype(int)
    rows, cols, _ = full_lines(array[:, :128], (0, 255, 255))  # the default line colour
    assert rows == cols == [0, 32, 64, 96, 127]  # uniform edges 0, 16, 32, 48, 64 at twice the input size
    # the warped image is the crop read every other pixel (de-normalised to within rounding), in 4x4 blocks
    crop = DartImageProcessor.from_pretrained(tiny_reshaper_folder)(
        astronaut, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
    crop = np.moveaxis(np.asarray(crop), 0, -1)
    assert np.abs(array[:, 132::4][::4] - crop[::2, ::2]).max() <= 1
    assert np.all(array[:, 132:][::4] == array[:, 132:][1::4])  # nearest-neighbour blocks
    with pytest.raises(SystemExit) as stop:
        main(["--model", str(tiny_reshaper_folder), str(image), "--out", str(tmp_path / "no.png"), "--num_tokens", "9"])
    assert stop.value.code == 2 and not (tmp_path / "no.png").exists()
    assert "--num_tokens" in capsys.readouterr().err
