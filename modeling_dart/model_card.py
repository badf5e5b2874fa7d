"""Model cards (README.md with YAML metadata) for converted and fine-tuned DART folders."""

from __future__ import annotations

from pathlib import Path

PAPER = "https://arxiv.org/abs/2506.10390"


def _yaml_list(values) -> str:
    return "".join(f"\n- {value}" for value in values)


def render_model_card(
    config,
    title: str,
    source: str,
    task: str = "image-classification",
    base_model: str | None = None,
    license: str = "other",
    datasets: list[str] | None = None,
    metrics: dict[str, float] | None = None,
    extra_facts: dict[str, object] | None = None,
    repo_id: str | None = None,
) -> str:
    """Text of a model card for a DART folder.

    Args:
        config (`DartConfig`): the model's configuration.
        title (`str`): heading.
        source (`str`): one paragraph on where the weights come from.
        task (`str`): `"image-classification"`, `"video-classification"` or `"image-segmentation"` (a reshaper
            segmentation model) (the `pipeline_tag`).
        base_model (`str`, *optional*): Hub id of the model this one was fine-tuned from.
        license (`str`): licence identifier for the metadata.
        datasets (`list[str]`, *optional*): dataset names for the metadata.
        metrics (`dict`, *optional*): evaluation results to list.
        extra_facts (`dict`, *optional*): more rows for the facts table.
        repo_id (`str`, *optional*): the Hub id used in the loading examples.
    """
    repo_id = repo_id or "path/to/this/folder"
    reshaper = getattr(config, "model_type", None) == "dart_reshaper"
    if reshaper:  # DART's second form: no tokens, a warped image for any classifier
        tags = ["dart", "vision", task, "dart-reshaper", config.backbone_config.model_type]
    else:
        tags = ["dart", "vision", task, f"dart-{config.backbone}", "adaptive-tokenization"]
        if config.backbone != "vit":
            tags.append("mamba")
    header = ["---", "library_name: transformers", f"pipeline_tag: {task}", f"license: {license}",
              "tags:" + _yaml_list(tags)]
    if base_model:
        header.append(f"base_model: {base_model}")
    if datasets:
        header.append("datasets:" + _yaml_list(datasets))
    header.append("---")

    if reshaper:
        warped = config.output_size or config.image_size // config.downscale_factor
        warped = warped if isinstance(warped, list) else [warped, warped]
        segmenter = task == "image-segmentation"
        facts = {
            "form": f"image reshaper + `{config.backbone_config.model_type}` "
                    + ("segmentation model" if segmenter else "classifier"),
            "warped image (default, overridable per call)": f"{warped[0]}x{warped[1]}",
        }
    else:
        facts = {
            "backbone": {"vit": "DeiT (ViT)", "vim": "Vision Mamba", "videomamba": "VideoMamba"}[config.backbone],
            "hidden size / layers": f"{config.hidden_size} / {config.num_hidden_layers}",
            "tokens (default, overridable per call)": config.num_tokens,
        }
    facts |= {
        "input resolution": f"{config.image_size}x{config.image_size}",
        "scorer": f"{config.scorer_trunk} + head {config.scorer_head}" if config.scorer == "learned" else "uniform",
        "score normalization": config.score_normalization,
        "labels": len(config.id2label),
    }
    facts.update(extra_facts or {})
    table = "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()])
    results = ""
    if metrics:
        results = "\n## Evaluation\n\n" + "\n".join(
            ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                                                 for k, v in metrics.items()]) + "\n"
    auto = {"video-classification": "AutoModelForVideoClassification",
            "image-segmentation": "AutoModelForSemanticSegmentation"}.get(task, "AutoModelForImageClassification")
    example_input = "video frames" if task == "video-classification" else "an image"
    if reshaper:
        intro = (f"DART ([paper]({PAPER})) in its second form: an image reshaper warps the input into a smaller image "
                 "whose rows and columns give more pixels to the parts a small scoring network finds important, and "
                 + (f"a semantic segmentation model (`{config.backbone_config.model_type}`) segments the warped "
                    "image; its logits are warped back to the input grid by the inverse of the warp."
                    if segmenter else
                    f"an image classifier (`{config.backbone_config.model_type}`) classifies the warped image."))
        usage = ("The warped size can be changed at call time (`model(pixel_values, output_size=...)`); the output "
                 "carries the warp (`warped_pixel_values`, `row_edges` and `col_edges` in input pixels) and the score "
                 "map.")
    else:
        intro = (f"DART (Differentiable Dynamic Adaptive Region Tokenizer, [paper]({PAPER})) replaces the fixed patch "
                 "grid of a vision backbone with content-dependent patches: a small scoring network predicts where "
                 "the content is, and the tokens are cut finer there and coarser on the background.")
        usage = ("The number of tokens can be changed at call time (`model(pixel_values, num_tokens=121)`) to trade "
                 "accuracy for compute; the output carries each token's region (`regions`, boxes in input pixels) "
                 "and the score map.")
    return f"""{chr(10).join(header)}

# {title}

{intro}

{source}

## Intended use

{task.replace('-', ' ').capitalize()} with {example_input} as input. {usage}

{table}
{results}
## How to use

With the `modeling_dart` package installed (`pip install modeling_dart`):

```python
import modeling_dart  # registers DART with the Auto classes
from transformers import pipeline

classifier = pipeline("{task}", model="{repo_id}")
```

Without it, the folder carries its own modeling code:

```python
from transformers import AutoImageProcessor, {auto}

model = {auto}.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
```

## Limitations

Predictions depend on the image processor's resolution ({config.image_size}x{config.image_size} by default). With
`score_normalization="batch"` (the original behaviour) an image's {"warp depends" if reshaper else "tokens depend"} on
the other images in its batch; the default `"image"` keeps predictions batch-independent.
"""


def write_model_card(output_dir: str | Path, config, **kwargs) -> Path:
    """Write `README.md` into `output_dir` (see [`render_model_card`] for the arguments)."""
    path = Path(output_dir) / "README.md"
    path.write_text(render_model_card(config, **kwargs), encoding="utf-8")
    return path
