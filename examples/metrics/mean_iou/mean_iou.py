"""Mean IoU: the intersection over union of each class, averaged over the classes, for semantic segmentation.

A local `evaluate` metric module, used by the examples when `evaluate.load("mean_iou")` cannot reach the Hub (offline
machines): `evaluate.load("examples/metrics/mean_iou")`. Same inputs and outputs as the Hub's `mean_iou` metric
(`predictions`, `references`, `num_labels`, `ignore_index`, optional `nan_to_num`, `label_map`, `reduce_labels`),
computed with NumPy only. Areas are summed over all images before dividing (the Hub metric's `total_area_*`).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
For each class, IoU = |prediction AND reference| / |prediction OR reference|, over the pixels whose reference is not
`ignore_index`, summed over all images. Mean IoU averages the classes that occur in the predictions or references
(a class absent from both has no IoU and is left out of the mean).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `ndarray`): predicted label maps, each `(height, width)` of integer class ids.
    references (`list` of `ndarray`): ground-truth label maps, each the size of its prediction.
    num_labels (`int`): number of classes.
    ignore_index (`int`): the reference label of pixels to skip (e.g. 255).
    nan_to_num (`float`, *optional*): replace the NaN of absent classes by this value.
    label_map (`dict[int, int]`, *optional*): old id -> new id, applied to the references first.
    reduce_labels (`bool`, defaults to `False`): references: 0 becomes 255 and every other id drops by one.

Returns:
    mean_iou (`float`), mean_accuracy (`float`), overall_accuracy (`float`), per_category_iou (`ndarray`),
    per_category_accuracy (`ndarray`).

Examples:
    >>> metric = evaluate.load("examples/metrics/mean_iou")
    >>> out = metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]], num_labels=2,
    ...                      ignore_index=255)
    >>> round(out["mean_iou"], 4)
    0.5
"""

_CITATION = ""


def area_counts(prediction, reference, num_labels, ignore_index, label_map=None, reduce_labels=False):
    """Per-class pixel counts of one image: `(intersection, union, predicted, reference)`, each `(num_labels,)`."""
    prediction = np.asarray(prediction, dtype=np.int64)
    reference = np.asarray(reference, dtype=np.int64).copy()
    if prediction.shape != reference.shape:
        raise ValueError(f"a prediction and its reference must have the same shape, got {prediction.shape} and "
                         f"{reference.shape}.")
    if label_map:
        original = reference.copy()
        for old, new in label_map.items():
            reference[original == old] = new
    if reduce_labels:
        reference[reference == 0] = 255
        reference = reference - 1
        reference[reference == 254] = 255
    keep = reference != ignore_index
    prediction, reference = prediction[keep], reference[keep]
    bins = np.arange(num_labels + 1)
    hits = prediction[prediction == reference]
    intersection = np.histogram(hits, bins=bins)[0]
    predicted = np.histogram(prediction, bins=bins)[0]
    labelled = np.histogram(reference, bins=bins)[0]
    return intersection, predicted + labelled - intersection, predicted, labelled


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    def _compute(self, predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None,
                 reduce_labels=False):
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
            raise ValueError(f"`num_labels` must be a positive integer, got {num_labels!r}.")
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions for {len(references)} references.")
        totals = np.zeros((4, num_labels), dtype=np.float64)
        for prediction, reference in zip(predictions, references):
            totals += np.stack(area_counts(prediction, reference, num_labels, ignore_index, label_map,
                                           reduce_labels))
        intersection, union, _, labelled = totals
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersection / union
            accuracy = intersection / labelled
            overall = intersection.sum() / labelled.sum()
        result = {
            "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
            "overall_accuracy": float(overall),
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
        }
        if nan_to_num is not None:
            result = {key: np.nan_to_num(value, nan=nan_to_num) if isinstance(value, np.ndarray)
                      else (nan_to_num if np.isnan(value) else value) for key, value in result.items()}
        return result
