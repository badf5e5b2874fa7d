"""Accuracy: the fraction of predictions equal to their references.

A local `evaluate` metric module, used by the examples when `evaluate.load("accuracy")` cannot reach the Hub (offline
machines): `evaluate.load("examples/metrics/accuracy")`. Same inputs and outputs as the Hub's `accuracy` metric
(`predictions`, `references`, optional `normalize` and `sample_weight`), computed with NumPy only.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among the total number of cases processed:
Accuracy = (TP + TN) / (TP + TN + FP + FN).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    normalize (`bool`, defaults to `True`): return the fraction of correct predictions; if `False`, their
        (weighted) count.
    sample_weight (`list` of `float`, defaults to `None`): per-sample weights.

Returns:
    accuracy (`float` or `int`): in [0, 1] with `normalize=True`, else the number of correct predictions.

Examples:
    >>> metric = evaluate.load("examples/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 2, 0], references=[0, 1, 1, 0])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/accuracy"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(
                f"`predictions` and `references` must have the same length, got {predictions.shape} and "
                f"{references.shape}."
            )
        correct = (predictions == references).astype(np.float64)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            total, hits = sample_weight.sum(), (correct * sample_weight).sum()
        else:
            total, hits = float(len(correct)), correct.sum()
        if not normalize:
            return {"accuracy": float(hits) if sample_weight is not None else int(hits)}
        return {"accuracy": float(hits / total) if total > 0 else 0.0}
