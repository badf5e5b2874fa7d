#!/usr/bin/env python
"""Bad- and edge-input probes (issue #24): a reproducible re-run of the ~340 probes the issue describes, and those of
the image reshaper and RMT (issue #25, item 9).

A script, not a pytest module (pytest collects only `test_*.py`). It throws systematically generated bad and edge
inputs at the configs, the image and video models, the image and video processors, the image reshaper and RMT
(configs, models, coordinate maps), loading, the converter CLIs (token variants, darmt_l6 and RMT included), the
ONNX exporter and the image-classification training script, and classifies every outcome:

- clear:   a `ValueError` / `TypeError` (or a CLI exit code 2 with a one-line `error:` message) whose message names
           what the probe says it must name (the argument, field or flag involved);
- handled: an edge input that works and gives a correct, finite result, or a documented warning that names it;
- unclear: an exception of another type, a traceback out of a CLI, an exit code other than 0/2, or a message that
           does not name the argument;
- silent:  accepted with a wrong / NaN / unchanged result, or exit 0 where it should have failed;
- lost:    a file the run was not told to write (an input, or an unrelated file in an output folder) was deleted or
           changed. This overrides every other category.

Loading probes accept an `OSError` that names the file as clear (Transformers' own convention for missing / unreadable
files); everywhere else only `ValueError` / `TypeError` count. A failed CLI run that leaves a new output folder behind
is listed under "leftovers" (the issue's "a failed run leaves nothing half-written").

Cost on 2 CPU cores: about 2 minutes (~490 probes), and about one more for the ~155 probes of the image reshaper and
RMT (`--only reshaper,reshaper_converters` runs those alone). At most one real ONNX export (the argument probes run
with the exporter replaced by a stub that records a call: reaching it means an argument was not checked before the
export), and two short training runs (`--max_steps 1`, tiny model, six 40x40 images per split).

Usage:
    python tests/bad_input_probes.py [--json PATH] [--only config,forward,...] [--quiet]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(2)

CATEGORIES = ("clear", "handled", "unclear", "silent", "lost")
NAN, INF = float("nan"), float("inf")


# ================================================================================================= the probe machinery
@dataclass
class CliRun:
    """What a script's `main(argv)` / `cli(argv)` did: its exit code, its output, and an uncaught exception."""

    code: int | None
    out: str
    err: str
    exc: BaseException | None = None
    tb: str = ""


@dataclass
class Probe:
    component: str
    name: str
    fn: Callable[[], Any]
    names: tuple = ()  # what a refusal must mention: each entry a string, or a tuple of alternatives
    expect: str = "error"  # "error": must be refused; "ok": must work (check); "either"; "warn": must warn
    check: Callable[[Any], Any] | None = None  # result -> True (correct) or a string saying what is wrong
    errors: tuple = (ValueError, TypeError)


@dataclass
class Result:
    component: str
    name: str
    category: str
    expect: str
    detail: str
    seconds: float
    leftover: list = field(default_factory=list)


PROBES: list[Probe] = []


def probe(component, name, fn, names=(), expect="error", check=None, errors=(ValueError, TypeError)):
    if isinstance(names, str):
        names = (names,)
    PROBES.append(Probe(component, name, fn, tuple(names), expect, check, tuple(errors)))


class Context:
    """Per-probe bookkeeping: files that must survive, output folders that a failed run must not leave behind."""

    def __init__(self):
        self.kept: dict[Path, dict[str, bytes] | bytes] = {}
        self.fresh: list[Path] = []

    def keep(self, *paths):
        for path in paths:
            path = Path(path)
            if path.is_dir():
                self.kept[path] = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}
            elif path.is_file():
                self.kept[path] = path.read_bytes()

    def must_not_appear(self, path):
        path = Path(path)
        if not path.exists():
            self.fresh.append(path)

    def lost(self) -> list[str]:
        problems = []
        for path, before in self.kept.items():
            if isinstance(before, bytes):
                if not path.is_file():
                    problems.append(f"{path.name} deleted")
                elif path.read_bytes() != before:
                    problems.append(f"{path.name} changed")
            else:
                now = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()} \
                    if path.is_dir() else {}
                for name, data in before.items():
                    if name not in now:
                        problems.append(f"{path.name}/{name} deleted")
                    elif now[name] != data:
                        problems.append(f"{path.name}/{name} changed")
        return problems


CTX = Context()
TMP_ROOT: Path = Path(tempfile.mkdtemp(prefix="dart_probes_"))
_counter = [0]


def tmp(name="t") -> Path:
    """A new empty folder for one probe."""
    _counter[0] += 1
    folder = TMP_ROOT / f"{_counter[0]:04d}_{name}"
    folder.mkdir(parents=True)
    return folder


def keep(*paths):
    CTX.keep(*paths)


def fresh(path):
    CTX.must_not_appear(path)
    return path


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage())
        except (TypeError, ValueError):  # a malformed log call: keep its template
            self.messages.append(str(record.msg))


def _mentions(text: str, names: tuple) -> list[str]:
    """The entries of `names` that `text` does not mention (case-insensitive; an entry may be a tuple of alternatives)."""
    low = text.lower().replace("`", "")
    missing = []
    for entry in names:
        options = entry if isinstance(entry, tuple) else (entry,)
        if not any(str(option).lower().replace("`", "") in low for option in options):
            missing.append("/".join(str(o) for o in options))
    return missing


def _short(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _judge_check(p: Probe, value) -> tuple[str, str]:
    if p.check is None:
        return "handled", "accepted"
    verdict = p.check(value)
    if verdict is True or verdict is None:
        return "handled", "accepted; result correct"
    return "silent", f"accepted, but {verdict}"


def classify(p: Probe, value, exc, tb, warned: list[str]) -> tuple[str, str]:
    if isinstance(value, CliRun):
        return classify_cli(p, value, warned)
    if exc is not None:
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, p.errors):
            missing = _mentions(str(exc), p.names)
            if not missing:
                return "clear", _short(message)
            return "unclear", _short(f"{message}  [does not name {', '.join(missing)}]")
        return "unclear", _short(message)
    # accepted
    if p.expect == "warn":
        hits = [w for w in warned if not _mentions(w, p.names)]
        if hits:
            return "handled", _short(f"warned: {hits[0]}")
        return "silent", "accepted without a warning naming " + ", ".join("/".join(e) if isinstance(e, tuple) else e
                                                                          for e in p.names)
    if p.expect == "error":
        if p.check is not None:  # a refusal was expected, but a correct result is acceptable to the check
            category, detail = _judge_check(p, value)
            return ("silent", detail) if category == "silent" else ("silent", "accepted (should be refused)")
        return "silent", _short(f"accepted (should be refused); got {_describe_value(value)}")
    return _judge_check(p, value)


def classify_cli(p: Probe, run: CliRun, warned) -> tuple[str, str]:
    if run.exc is not None:
        return "unclear", _short(f"traceback: {type(run.exc).__name__}: {run.exc}")
    error_lines = [line for line in run.err.splitlines() if line.startswith("error:") or ": error:" in line]
    if run.code == 0:
        if p.expect == "error":
            return "silent", "exit 0 (should be refused)"
        return _judge_check(p, run)
    if run.code == 2:
        if "Traceback (most recent call last)" in run.err:
            return "unclear", _short("exit 2 with a traceback: " + run.err.strip().splitlines()[-1])
        if len(error_lines) != 1:
            return "unclear", _short(f"exit 2 with {len(error_lines)} error lines: {run.err.strip()[-200:]}")
        missing = _mentions(error_lines[0], p.names)
        if missing:
            return "unclear", _short(f"exit 2: {error_lines[0]}  [does not name {', '.join(missing)}]")
        return "clear", _short(f"exit 2: {error_lines[0]}")
    tail = (error_lines or run.err.strip().splitlines() or run.out.strip().splitlines() or [""])[-1]
    return "unclear", _short(f"exit {run.code}: {tail}")


def _describe_value(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)}"
    if hasattr(value, "logits"):
        return f"logits {tuple(value.logits.shape)} finite={bool(torch.isfinite(value.logits).all())}"
    return _short(repr(value), 80)


def run_probe(p: Probe) -> Result:
    global CTX
    CTX = Context()
    capture = _LogCapture()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(capture)
    value, exc, tb = None, None, ""
    start = time.perf_counter()
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed), \
            contextlib.redirect_stderr(printed):
        warnings.simplefilter("always")
        try:
            value = p.fn()
        except Exception as error:  # noqa: BLE001 - every exception is an outcome
            exc, tb = error, traceback.format_exc()
    seconds = time.perf_counter() - start
    hf_logger.removeHandler(capture)
    warned = [str(w.message) for w in caught] + capture.messages + printed.getvalue().splitlines()
    if isinstance(value, CliRun):
        warned += value.err.splitlines()
    try:
        category, detail = classify(p, value, exc, tb, warned)
    except Exception as error:  # noqa: BLE001 - a bug of the probe itself
        category, detail = "unclear", f"PROBE CHECK FAILED: {type(error).__name__}: {error}"
    if p.expect == "ok" and category == "clear":
        detail = "refused an input that should work: " + detail
    lost = CTX.lost()
    if lost:
        category, detail = "lost", "; ".join(lost) + f"  (outcome: {detail})"
    leftover = []
    if category != "handled" and not (isinstance(value, CliRun) and value.code == 0):
        leftover = [str(path) for path in CTX.fresh if path.exists()]
    return Result(p.component, p.name, category, p.expect, detail, round(seconds, 3), leftover)


def call_main(main, argv) -> CliRun:
    """Run a script's `main(argv)` in-process, capturing stdout / stderr, the exit code and any uncaught exception."""
    out, err = io.StringIO(), io.StringIO()
    code, exc, tb = None, None, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
            if code is None or isinstance(code, dict):  # `main` returning metrics / None: success
                code = 0
        except SystemExit as stop:
            if isinstance(stop.code, str):  # `raise SystemExit("message")`: Python prints it, exit code 1
                err.write(stop.code + "\n")
                code = 1
            else:
                code = 0 if stop.code is None else stop.code
        except Exception as error:  # noqa: BLE001
            exc, tb = error, traceback.format_exc()
    return CliRun(code, out.getvalue(), err.getvalue(), exc, tb)


# ---------------------------------------------------------------------------------------------------- check helpers
def finite_output(shape_logits=None, shape_regions=None):
    def check(out):
        logits = out.logits
        if shape_logits is not None and tuple(logits.shape) != tuple(shape_logits):
            return f"logits shape {tuple(logits.shape)} != {shape_logits}"
        if not torch.isfinite(logits).all():
            return "NaN/inf logits"
        regions = getattr(out, "regions", None)
        if regions is not None:
            if shape_regions is not None and tuple(regions.shape) != tuple(shape_regions):
                return f"regions shape {tuple(regions.shape)} != {shape_regions}"
            if not torch.isfinite(regions).all():
                return "NaN/inf regions"
        return True

    return check


def close_to(reference: Callable[[], torch.Tensor], atol: float, key=lambda out: out.logits):
    def check(out):
        got = key(out).float()
        want = reference().float()
        if got.shape != want.shape:
            return f"shape {tuple(got.shape)} != {tuple(want.shape)}"
        if not torch.isfinite(got).all():
            return "NaN/inf output"
        diff = float((got - want).abs().max())
        return True if diff <= atol else f"differs from the reference by {diff:.3g} > {atol:g}"

    return check


# ====================================================================================================== components
def tiny_config(**overrides):
    from tests.conftest import tiny_config as make

    return make(**overrides)


_cache: dict[str, Any] = {}


def cached(key, build):
    if key not in _cache:
        _cache[key] = build()
    return _cache[key]


# ---------------------------------------------------------------------------------------------------------- config
def _field_kinds():
    """Every `DartConfig` / `DartVideoConfig` keyword with its kind, read from the signatures (so new fields join)."""
    from modeling_dart import DartConfig, DartVideoConfig

    kinds = {}
    for cls in (DartConfig, DartVideoConfig):
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name in ("self", "kwargs") or name in kinds:
                continue
            annotation = str(param.annotation)
            optional = "None" in annotation
            if "bool" in annotation:
                kind = "bool"
            elif "int" in annotation:
                kind = "int"
            elif "float" in annotation:
                kind = "float"
            else:
                kind = "str"
            kinds[name] = (kind, optional, param.default, cls.__name__)
    return kinds


RATES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")


def register_config():
    from modeling_dart import DartConfig, DartVideoConfig

    def build(field_name, value, cls_name):
        def fn():
            if cls_name == "DartVideoConfig":
                return DartVideoConfig(**{field_name: value})
            return DartConfig(**{field_name: value})

        return fn

    def set_after(field_name, value, cls_name):
        """Set one field of a valid (tiny) config; when the value is accepted, build a model from the config: the
        value must be refused by one or the other, and a refused value must not be kept."""

        def fn():
            from modeling_dart import DartModel, DartVideoMambaModel

            video = cls_name == "DartVideoConfig"
            config = tiny_config(backbone="videomamba", num_frames=2) if video else tiny_config()
            before = getattr(config, field_name)
            try:
                setattr(config, field_name, value)
            except (ValueError, TypeError):
                after = getattr(config, field_name)
                if not (after == before or after is before):
                    raise RuntimeError(f"refused {value!r} but kept it ({field_name}={after!r})") from None
                raise
            try:
                return (DartVideoMambaModel if video else DartModel)(config)
            except Exception as error:
                raise type(error)(f"[accepted when set; the model build then raised] {error}") from error

        return fn

    # each field gets one wrong type and one wrong range at construction, and one more (rotating) when set after
    int_types = ["8", 2.5, True, None, [8], NAN]
    int_ranges = [0, -3, -(10**12)]
    float_types = ["0.1", True, None, [0.1]]
    float_ranges = [NAN, INF, -1.0, -INF]
    bool_values = ["no", "false", 0, 1, None, 1.0, "True"]
    kinds = _field_kinds()
    for i, (name, (kind, optional, default, cls_name)) in enumerate(sorted(kinds.items())):
        if kind == "int":
            pool = [v for v in int_types if not (v is None and optional)]
            values = [pool[i % len(pool)], int_ranges[i % len(int_ranges)]]
            after = pool[(i + 1) % len(pool)] if i % 2 else int_ranges[(i + 1) % len(int_ranges)]
        elif kind == "float":
            values = [float_types[i % len(float_types)], float_ranges[i % len(float_ranges)]]
            if name in RATES:
                values.append(1.5)
            after = float_ranges[(i + 1) % len(float_ranges)] if i % 2 else float_types[(i + 1) % len(float_types)]
        elif kind == "bool":
            pool = [v for v in bool_values if not (v is None and optional)]
            values = [pool[i % len(pool)], pool[(i + 3) % len(pool)]]
            after = pool[(i + 5) % len(pool)]
        else:
            values = [name[:-1] + "x", 3 if optional else None]
            after = name.upper() if i % 2 else "typo"
        for value in values:
            probe("config", f"{cls_name}({name}={value!r})", build(name, value, cls_name), names=name)
        probe("config", f"{cls_name}().{name} = {after!r} (set after construction)",
              set_after(name, after, cls_name), names=name)

    # huge values where a relation between fields must refuse them
    probe("config", "DartConfig(num_tokens=10**6)", build("num_tokens", 10**6, "DartConfig"), names="num_tokens")
    probe("config", "DartConfig().scorer_trunk_depth = '4' (set after construction)",
          set_after("scorer_trunk_depth", "4", "DartConfig"), names="scorer_trunk_depth")
    probe("config", "DartConfig(scorer_trunk_depth=10**6)", build("scorer_trunk_depth", 10**6, "DartConfig"),
          names="scorer_trunk_depth")
    probe("config", "DartConfig(hidden_size=192, num_attention_heads=5)",
          lambda: DartConfig(hidden_size=192, num_attention_heads=5), names=("hidden_size", "num_attention_heads"))
    probe("config", "DartConfig(image_size=8, patch_size=16)", lambda: DartConfig(image_size=8, patch_size=16),
          names=("image_size", "patch_size"))
    probe("config", "DartConfig(scorer_max_density_ratio=1.0)", build("scorer_max_density_ratio", 1.0, "DartConfig"),
          names="scorer_max_density_ratio")
    probe("config", "DartVideoConfig(tubelet_size=2)", build("tubelet_size", 2, "DartVideoConfig"),
          names="tubelet_size")
    probe("config", "DartVideoConfig(cls_token_position='middle')",
          build("cls_token_position", "middle", "DartVideoConfig"), names="cls_token_position")
    probe("config", "DartVideoConfig(backbone='vit')", build("backbone", "vit", "DartVideoConfig"), names="backbone")

    def relation_after_construction():
        from modeling_dart import DartModel

        config = tiny_config()
        config.num_tokens = config.max_num_tokens() + 1
        return DartModel(config)

    probe("config", "num_tokens set past the grid's maximum, then a model built", relation_after_construction,
          names="num_tokens")

    # valid edges: accepted, with the right derived values
    probe("config", "DartConfig(backbone='videomamba') is a DartVideoConfig",
          lambda: DartConfig(backbone="videomamba", num_frames=4), expect="ok",
          check=lambda c: True if type(c).__name__ == "DartVideoConfig" and c.num_frames == 4 else f"{type(c)}")
    probe("config", "DartConfig(num_channels=1) (valid edge)", lambda: DartConfig(num_channels=1), expect="ok",
          check=lambda c: c.num_channels == 1 or "num_channels changed")
    probe("config", "time_step_rank='auto' follows hidden_size", lambda: DartConfig(hidden_size=384,
                                                                                      num_attention_heads=6),
          expect="ok", check=lambda c: c.time_step_rank == 24 or f"time_step_rank={c.time_step_rank}")

    # near-miss keywords: a warning that names the real field
    for typo, real in (("num_token", "num_tokens"), ("qvk_bias", "qkv_bias"), ("scorer_haed", "scorer_head"),
                       ("patch_szie", "patch_size"), ("hiden_size", "hidden_size"),
                       ("freeze_scorer_trunks", "freeze_scorer_trunk"), ("score_normalisation", "score_normalization")):
        probe("config", f"DartConfig({typo}=...) near miss", (lambda t=typo: DartConfig(**{t: 8})), names=real,
              expect="warn")
    probe("config", "DartVideoConfig(num_frame=4) near miss", lambda: DartVideoConfig(num_frame=4), names="num_frames",
          expect="warn")


# --------------------------------------------------------------------------------------------------------- forward
def image_model():
    def build():
        from modeling_dart import DartForImageClassification

        torch.manual_seed(0)
        return DartForImageClassification(tiny_config(num_labels=3)).eval()

    return cached("image_model", build)


def pixels(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def forward(x=None, **kwargs):
    def fn():
        with torch.no_grad():
            return image_model()(x() if callable(x) else x, **kwargs)

    return fn


def reference_logits(x, **kwargs):
    def ref():
        with torch.no_grad():
            return image_model()(x, **kwargs).logits

    return ref


def register_forward():
    base = pixels(2, 3, 64, 64)
    bad_pixels = [
        ("3-D (C, H, W)", pixels(3, 64, 64)),
        ("2-D", pixels(64, 64)),
        ("5-D", pixels(1, 2, 3, 64, 64)),
        ("1 channel", pixels(2, 1, 64, 64)),
        ("4 channels", pixels(2, 4, 64, 64)),
        ("channels last (B, H, W, 3)", pixels(2, 64, 64, 3)),
        ("empty batch", pixels(0, 3, 64, 64)),
        ("one NaN pixel", base.clone().index_put_((torch.tensor([1]), torch.tensor([2]), torch.tensor([10]),
                                                   torch.tensor([10])), torch.tensor(NAN))),
        ("+inf pixels", torch.full((1, 3, 64, 64), INF)),
        ("-inf pixel", base.clone().index_put_((torch.tensor([0]), torch.tensor([0]), torch.tensor([0]),
                                                torch.tensor([0])), torch.tensor(-INF))),
        ("uint8", torch.zeros(1, 3, 64, 64, dtype=torch.uint8)),
        ("int64", torch.zeros(1, 3, 64, 64, dtype=torch.int64)),
        ("bool", torch.zeros(1, 3, 64, 64, dtype=torch.bool)),
        ("complex", torch.zeros(1, 3, 64, 64, dtype=torch.complex64)),
        ("height 7", pixels(1, 3, 7, 64)),
        ("width 4", pixels(1, 3, 64, 4)),
        ("1x1 image", pixels(1, 3, 1, 1)),
        ("nested list", [[0.0] * 64] * 64),
        ("numpy array", np.zeros((1, 3, 64, 64), dtype=np.float32)),
        ("None", None),
    ]
    for label, x in bad_pixels:
        probe("forward", f"pixel_values {label}", forward(x), names="pixel_values")

    probe("forward", "huge pixel values (1e30)", forward(torch.full((1, 3, 64, 64), 1e30)), names="pixel_values",
          expect="either", check=finite_output((1, 3)))
    # valid edges
    edges = [
        ("8x8 (smallest)", pixels(1, 3, 8, 8)),
        ("odd 33x47", pixels(1, 3, 33, 47)),
        ("thin 8x256", pixels(1, 3, 8, 256)),
        ("tall 200x9", pixels(1, 3, 200, 9)),
        ("constant zero image", torch.zeros(2, 3, 64, 64)),
        ("batch of 1", pixels(1, 3, 64, 64)),
    ]
    for label, x in edges:
        probe("forward", f"pixel_values {label}", forward(x), expect="ok", check=finite_output((x.shape[0], 3)))
    probe("forward", "float16 input (cast to the weights)", forward(base.half()), expect="ok",
          check=close_to(reference_logits(base.half().float()), 1e-3))
    probe("forward", "bfloat16 input", forward(base.bfloat16()), expect="ok", check=finite_output((2, 3)))
    probe("forward", "float64 input", forward(base.double()), expect="ok", check=close_to(reference_logits(base), 1e-4))
    probe("forward", "non-contiguous input (transposed view)", forward(base.transpose(2, 3).contiguous().transpose(2, 3)),
          expect="ok", check=close_to(reference_logits(base), 1e-5))
    probe("forward", "channels_last memory format", forward(base.to(memory_format=torch.channels_last)), expect="ok",
          check=close_to(reference_logits(base), 1e-4))
    probe("forward", "image alone == image in a batch (score_normalization='image')", forward(base[:1]), expect="ok",
          check=close_to(lambda: reference_logits(base)()[:1], 1e-4))
    probe("forward", "score_normalization='batch' with batch 1", forward(base[:1], score_normalization="batch"),
          expect="ok", check=finite_output((1, 3)))
    probe("forward", "score_normalization='batch' on a constant batch",
          forward(torch.ones(2, 3, 64, 64), score_normalization="batch"), expect="ok", check=finite_output((2, 3)))

    def grad_run():
        x = base.clone().requires_grad_(True)
        image_model()(x).logits.sum().backward()
        return x.grad

    probe("forward", "requires_grad input: finite gradient", grad_run, expect="ok",
          check=lambda g: (g is not None and bool(torch.isfinite(g).all())) or "no / non-finite gradient")

    # num_tokens
    for value in (0, -1, 10**6, 2.5, True, "16", [16]):
        probe("forward", f"num_tokens={value!r}", forward(base, num_tokens=value), names="num_tokens")
    probe("forward", "num_tokens=NaN", forward(base, num_tokens=NAN), names="num_tokens")
    probe("forward", "num_tokens=1", forward(base, num_tokens=1), expect="ok", check=finite_output((2, 3), (2, 1, 4)))
    probe("forward", "num_tokens=256 (the maximum)", forward(base, num_tokens=256), expect="ok",
          check=finite_output((2, 3), (2, 256, 4)))
    probe("forward", "num_tokens=257 (one past the maximum)", forward(base, num_tokens=257), names="num_tokens")
    probe("forward", "num_tokens=np.int64(16)", forward(base, num_tokens=np.int64(16)), names="num_tokens",
          expect="either", check=close_to(reference_logits(base, num_tokens=16), 1e-5))
    probe("forward", "num_tokens=torch.tensor(16)", forward(base, num_tokens=torch.tensor(16)), names="num_tokens",
          expect="either", check=close_to(reference_logits(base, num_tokens=16), 1e-5))
    # score_normalization
    for value in ("Image", "global", "", "batch ", 1):
        probe("forward", f"score_normalization={value!r}", forward(base, score_normalization=value),
              names="score_normalization")

    # score_grid_size=1 and other degenerate grids: supported with finite results, or refused by the config
    from modeling_dart import DartForImageClassification

    def grid_model(x, call=None, **overrides):
        def fn():
            torch.manual_seed(0)
            config = tiny_config(**overrides)
            model = DartForImageClassification(config).eval()
            with torch.no_grad():
                return model(x, **(call or {}))

        return fn

    small = pixels(2, 3, 64, 64, seed=3)
    for tokens in (1, 2, 4, 16):
        probe("forward", f"score_grid_size=1, num_tokens={tokens}",
              grid_model(small, score_grid_size=1, num_tokens=tokens, num_labels=3), names="score_grid_size",
              expect="either", check=finite_output((2, 3), (2, tokens, 4)))
    probe("forward", "score_grid_size=1, saliency head, score_normalization='batch'",
          grid_model(small, {"score_normalization": "batch"}, score_grid_size=1, num_tokens=4, num_labels=3,
                     scorer_head="saliency"), names="score_grid_size", expect="either",
          check=finite_output((2, 3), (2, 4, 4)))
    probe("forward", "score_grid_size=1, vim backbone",
          grid_model(small, score_grid_size=1, num_tokens=4, num_labels=3, backbone="vim"), names="score_grid_size",
          expect="either", check=finite_output((2, 3)))
    probe("forward", "score_grid_size=2, num_tokens=64 (maximum)",
          grid_model(small, score_grid_size=2, num_tokens=64, num_labels=3), expect="ok",
          check=finite_output((2, 3), (2, 64, 4)))
    probe("forward", "vim backbone, 8x8 input", grid_model(pixels(1, 3, 8, 8), backbone="vim", num_labels=3),
          expect="ok", check=finite_output((1, 3)))
    probe("forward", "uniform scorer, 40x56 input", grid_model(pixels(1, 3, 40, 56), scorer="uniform", num_labels=3),
          expect="ok", check=finite_output((1, 3)))
    probe("forward", "saliency head, constant image, 'batch'",
          grid_model(torch.zeros(2, 3, 64, 64), {"score_normalization": "batch"}, scorer_head="saliency",
                     num_labels=3), expect="ok", check=finite_output((2, 3)))
    probe("forward", "num_labels=0 model (features only)", grid_model(small, num_labels=0), expect="ok",
          check=lambda out: bool(torch.isfinite(out.logits).all()) or "NaN")


# ---------------------------------------------------------------------------------------------------------- labels
def register_labels():
    base = pixels(2, 3, 64, 64, seed=1)

    def with_labels(labels, problem_type=None):
        def fn():
            model = image_model()
            model.config.problem_type = problem_type
            try:
                with torch.no_grad():
                    out = model(base, labels=labels() if callable(labels) else labels)
            except Exception:
                if model.config.problem_type is not problem_type:
                    raise RuntimeError(f"a failed call changed config.problem_type to {model.config.problem_type!r}")
                raise
            out.problem_type_after = model.config.problem_type
            model.config.problem_type = None
            return out

        return fn

    def expected_loss(labels):
        def check(out):
            with torch.no_grad():
                logits = image_model()(base).logits
            keep = labels != -100
            want = torch.nn.functional.cross_entropy(logits[keep], labels[keep].long())
            if not torch.isfinite(out.loss):
                return "NaN loss"
            return True if abs(float(out.loss - want)) < 1e-5 else f"loss {float(out.loss):.4f} != {float(want):.4f}"

        return check

    bad = [
        ("out of range [0, 3]", torch.tensor([0, 3])),
        ("negative [0, -2]", torch.tensor([0, -2])),
        ("batch mismatch (3,)", torch.tensor([0, 1, 2])),
        ("shape (2, 1)", torch.tensor([[0], [1]])),
        ("0-dim", torch.tensor(1)),
        ("float (2,) [1., 0.]", torch.tensor([1.0, 0.0])),
        ("bool", torch.tensor([True, False])),
        ("python list", [0, 1]),
        ("numpy array", np.array([0, 1])),
        ("complex", torch.tensor([1 + 0j, 0j])),
        ("multi-hot with 2.0", torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])),
        ("multi-hot with NaN", torch.tensor([[0.0, NAN, 0.0], [1.0, 0.0, 0.0]])),
        ("multi-hot shape (2, 4)", torch.zeros(2, 4)),
    ]
    for label, value in bad:
        probe("labels", f"labels {label}", with_labels(value), names="labels")
    probe("labels", "int labels with config.problem_type='regresion' (typo)",
          with_labels(torch.tensor([0, 1]), "regresion"), names="problem_type")
    good = [("int64 [2, 0]", torch.tensor([2, 0])), ("int32 [2, 0]", torch.tensor([2, 0], dtype=torch.int32)),
            ("uint8 [2, 0]", torch.tensor([2, 0], dtype=torch.uint8)), ("ignore_index [2, -100]", torch.tensor([2, -100]))]
    for label, value in good:
        probe("labels", f"labels {label}", with_labels(value), expect="ok", check=expected_loss(value))
    probe("labels", "multi-hot float (2, 3)", with_labels(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])),
          expect="ok", check=lambda out: (bool(torch.isfinite(out.loss)) and
                                          out.problem_type_after == "multi_label_classification") or "wrong loss")

    def float_then_int():
        model = image_model()
        model.config.problem_type = None
        with contextlib.suppress(ValueError, TypeError), torch.no_grad():
            model(base, labels=torch.tensor([1.0, 0.0]))
        after_failure = model.config.problem_type
        with torch.no_grad():
            out = model(base, labels=torch.tensor([1, 0]))
        model.config.problem_type = None
        return after_failure, out

    probe("labels", "a failed float-label call keeps problem_type; int labels then work", float_then_int, expect="ok",
          check=lambda r: (r[0] is None and bool(torch.isfinite(r[1].loss)))
          or f"problem_type after the failed call: {r[0]!r}")


# ----------------------------------------------------------------------------------------------- image processor
def processor():
    from modeling_dart import DartImageProcessor

    return cached("processor", lambda: DartImageProcessor(size={"shortest_edge": 16},
                                                          crop_size={"height": 16, "width": 16}))


def gray16():
    array = (np.arange(256).reshape(16, 16) * 7 % 256).astype(np.uint8)
    return array


def rgb16():
    g = gray16()
    return np.stack([g, np.roll(g, 3), 255 - g], axis=-1).astype(np.uint8)


def proc(images, **kwargs):
    def fn():
        return processor()(images() if callable(images) else images, return_tensors="pt", **kwargs)["pixel_values"]

    return fn


def same_as(reference_images, atol=1e-4, **ref_kwargs):
    def check(out):
        want = processor()(reference_images(), return_tensors="pt", **ref_kwargs)["pixel_values"]
        if tuple(out.shape) != tuple(want.shape):
            return f"shape {tuple(out.shape)} != {tuple(want.shape)}"
        if not torch.isfinite(out).all():
            return "NaN/inf pixels"
        diff = float((out - want).abs().max())
        return True if diff <= atol else f"pixels differ from the reference by up to {diff:.3g}"

    return check


def shaped(shape, constant=False):
    def check(out):
        if tuple(out.shape) != tuple(shape):
            return f"shape {tuple(out.shape)} != {shape}"
        if not torch.isfinite(out).all():
            return "NaN/inf pixels"
        if constant and float(out.std(dim=(2, 3)).max()) > 1e-4:
            return "a 1x1 image should give a constant image"
        return True

    return check


def white_check(out):
    if not torch.isfinite(out).all():
        return "NaN"
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    diff = float((out[0] - white[:, None, None]).abs().max())
    return True if diff < 1e-3 else f"transparent pixels are not white (diff {diff:.3g})"


def register_processor():
    L = lambda: Image.fromarray(gray16(), "L")
    RGB = lambda: Image.fromarray(rgb16(), "RGB")
    L_rgb = lambda: L().convert("RGB")

    def mode_image(mode):
        def make():
            if mode == "1":
                return L().point(lambda v: 255 if v > 127 else 0).convert("1", dither=Image.Dither.NONE)
            if mode == "LA-opaque":
                image = L().convert("LA")
                return image
            if mode == "RGBA-transparent":
                image = RGB().convert("RGBA")
                image.putalpha(0)
                return image
            if mode == "I":
                return L().convert("I")
            if mode == "I-1000":
                return Image.fromarray(gray16().astype(np.int32) * 4, "I")
            if mode == "I;16":
                return Image.fromarray(gray16().astype(np.uint16) * 257)
            if mode == "I;16B":
                array = (gray16().astype(np.uint16) * 257).astype(">u2")
                return Image.frombytes("I;16B", (16, 16), array.tobytes())
            if mode == "F-255":
                return Image.fromarray(gray16().astype(np.float32), "F")
            if mode == "F-01":
                return Image.fromarray(gray16().astype(np.float32) / 255, "F")
            if mode == "F-nan":
                array = gray16().astype(np.float32)
                array[3, 3] = NAN
                return Image.fromarray(array, "F")
            if mode == "P-transparent":
                image = RGB().convert("P")
                image.info["transparency"] = 0
                return image
            return RGB().convert(mode)

        return make

    reference_of = {
        "1": lambda: mode_image("1")().convert("L").convert("RGB"),
        "L": L_rgb, "LA-opaque": L_rgb, "I": L_rgb, "I;16": L_rgb, "I;16B": L_rgb, "F-255": L_rgb,
        "RGBA": RGB, "P": lambda: RGB().convert("P").convert("RGB"), "CMYK": lambda: RGB().convert("CMYK").convert("RGB"),
        "YCbCr": lambda: RGB().convert("YCbCr").convert("RGB"), "RGBa": RGB, "LAB": None, "HSV": None,
    }
    for mode in ("1", "L", "LA-opaque", "P", "RGBA", "CMYK", "YCbCr", "RGBa", "I", "I;16", "I;16B", "F-255"):
        make = mode_image(mode if mode not in ("L",) else "L")
        if mode == "L":
            make = L
        probe("processor", f"PIL mode {mode}", proc(make), expect="ok", check=same_as(reference_of[mode], atol=1e-4))
    for mode in ("LAB", "HSV", "PA", "La"):
        probe("processor", f"PIL mode {mode}", proc(mode_image(mode)), names="images", expect="either",
              check=shaped((1, 3, 16, 16)))
    probe("processor", "PIL RGBA fully transparent -> white", proc(mode_image("RGBA-transparent")), expect="ok",
          check=white_check)
    probe("processor", "PIL P with a transparent colour", proc(mode_image("P-transparent")), expect="ok",
          check=shaped((1, 3, 16, 16)))
    probe("processor", "PIL mode I with values up to 1020", proc(mode_image("I-1000")), names=("images", "'I'"))
    probe("processor", "PIL mode F in [0, 1]", proc(mode_image("F-01")), names=("images", "do_rescale"),
          expect="either", check=same_as(L_rgb, atol=1e-4))
    probe("processor", "PIL mode F with a NaN", proc(mode_image("F-nan")), names=("images", "NaN"))
    probe("processor", "PIL 0x0 image", proc(lambda: Image.new("RGB", (0, 0))), names="images")
    for size in ((1, 1), (1, 300), (300, 1), (2, 3)):
        probe("processor", f"PIL {size[0]}x{size[1]} image", proc(lambda s=size: Image.new("RGB", s, (200, 30, 90))),
              expect="ok", check=shaped((1, 3, 16, 16), constant=True))
    probe("processor", "PIL 1000x16 image (resize + crop)", proc(lambda: Image.new("RGB", (1000, 16), (1, 2, 3))),
          expect="ok", check=shaped((1, 3, 16, 16)))

    # numpy arrays
    g, c = gray16(), rgb16()
    arrays = [
        ("uint16 with values > 255", lambda: (c.astype(np.uint16) * 257), ("images",)),
        ("int64 with negative values", lambda: c.astype(np.int64) - 100, ("images",)),
        ("float32 in [-1, 1]", lambda: c.astype(np.float32) / 127.5 - 1, ("images",)),
        ("float32 with NaN", lambda: np.full((16, 16, 3), NAN, np.float32), ("images", "NaN")),
        ("float32 with inf", lambda: np.full((16, 16, 3), INF, np.float32), ("images",)),
        ("float32 above 255", lambda: c.astype(np.float32) * 2, ("images",)),
        ("bool", lambda: c > 100, ("images", "bool")),
        ("complex", lambda: c.astype(np.complex64), ("images", "complex")),
        ("object dtype", lambda: c.astype(object), ("images",)),
        ("1-D", lambda: c.reshape(-1), ("images",)),
        ("5-D", lambda: c[None, None], ("images",)),
        ("empty (0, 16, 3)", lambda: np.zeros((0, 16, 3), np.uint8), ("images",)),
        ("2 channels", lambda: c[..., :2], ("images", "channel")),
        ("5 channels (16, 16, 5)", lambda: np.concatenate([c, c[..., :2]], -1), ("images", "channel")),
        ("empty 4-D batch", lambda: np.zeros((0, 16, 16, 3), np.uint8), ("images",)),
    ]
    for label, make, names in arrays:
        probe("processor", f"numpy {label}", proc(make), names=names)
    probe("processor", "numpy float32 in [0, 1]", proc(lambda: c.astype(np.float32) / 255),
          names=("images", "do_rescale"), expect="either", check=same_as(RGB, atol=1e-4))
    ok_arrays = [
        ("uint8 (H, W, 3)", lambda: c, RGB),
        ("uint16 within [0, 255]", lambda: c.astype(np.uint16), RGB),
        ("int64 within [0, 255]", lambda: c.astype(np.int64), RGB),
        ("float32 in [0, 255]", lambda: c.astype(np.float32), RGB),
        ("float64 in [0, 255]", lambda: c.astype(np.float64), RGB),
        ("float16 in [0, 255]", lambda: c.astype(np.float16), RGB),
        ("channels first (3, H, W)", lambda: np.moveaxis(c, -1, 0).copy(), RGB),
        ("grayscale (H, W)", lambda: g, L_rgb),
        ("grayscale (1, H, W)", lambda: g[None], L_rgb),
        ("grayscale (H, W, 1)", lambda: g[..., None], L_rgb),
        ("RGBA opaque (H, W, 4)", lambda: np.concatenate([c, np.full((16, 16, 1), 255, np.uint8)], -1), RGB),
    ]
    for label, make, ref in ok_arrays:
        probe("processor", f"numpy {label}", proc(make), expect="ok", check=same_as(ref, atol=2e-3))
    probe("processor", "numpy float32 in [0, 1] with do_rescale=False", proc(lambda: c.astype(np.float32) / 255,
                                                                              do_rescale=False),
          expect="ok", check=same_as(RGB, atol=1e-4))
    probe("processor", "numpy 4-D batch (2, H, W, 3)", proc(lambda: np.stack([c, c])), expect="ok",
          check=shaped((2, 3, 16, 16)))

    # torch tensors
    tensors = [
        ("float (3, H, W) in [0, 255]", lambda: torch.from_numpy(np.moveaxis(c, -1, 0).astype(np.float32)), RGB),
        ("uint8 (H, W, 3)", lambda: torch.from_numpy(c), RGB),
        ("bfloat16 (3, H, W)", lambda: torch.from_numpy(np.moveaxis(c, -1, 0).astype(np.float32)).bfloat16(), None),
        ("requires_grad float", lambda: torch.from_numpy(np.moveaxis(c, -1, 0).astype(np.float32)).requires_grad_(),
         RGB),
        ("4-D batch (2, 3, H, W)", lambda: torch.from_numpy(np.moveaxis(c, -1, 0).copy()).expand(2, 3, 16, 16), None),
    ]
    for label, make, ref in tensors:
        check = same_as(ref, atol=2e-3) if ref is not None else shaped((1 if "batch" not in label else 2, 3, 16, 16))
        probe("processor", f"tensor {label}", proc(make), expect="ok", check=check)
    probe("processor", "tensor empty batch (0, 3, H, W)", proc(lambda: torch.zeros(0, 3, 16, 16)), names="images")
    probe("processor", "tensor bool", proc(lambda: torch.zeros(16, 16, 3, dtype=torch.bool)), names="images")

    # containers and other types
    photo_file = REPO_ROOT / "conversion" / "assets" / "chelsea.jpg"
    others = [
        ("None", None, ("images",)), ("empty list", [], ("images",)), ("[[]]", [[]], ("images",)),
        ("int 42", 42, ("images",)), ("dict", {"pixel_values": 1}, ("images",)),
        ("missing path string", "/no/such/image.png", ("images", "/no/such/image.png")),
        ("list with one bad entry", lambda: [RGB(), 42], ("images[1]",)),
        ("bytes", b"\x89PNG", ("images",)),
    ]
    for label, value, names in others:
        probe("processor", f"images = {label}", proc(value), names=names)

    def corrupt_file():
        folder = tmp("corrupt_image")
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
        return str(folder / "broken.jpg")

    probe("processor", "path of a corrupt JPEG", lambda: processor()(corrupt_file(), return_tensors="pt"),
          names=("images", "broken.jpg"))
    probe("processor", "pathlib.Path of a real photo", proc(lambda: photo_file), names="images", expect="either",
          check=shaped((1, 3, 16, 16)))
    probe("processor", "nested [[img, img], [img]]", proc(lambda: [[RGB(), RGB()], [RGB()]]), expect="ok",
          check=shaped((3, 3, 16, 16)))

    # processor arguments
    from modeling_dart import DartImageProcessor

    def with_processor(image, **kwargs):
        def fn():
            return DartImageProcessor(**kwargs)(image(), return_tensors="pt")["pixel_values"]

        return fn

    probe("processor", "size={'shortest_edge': 0}", with_processor(RGB, size={"shortest_edge": 0}), names="size")
    probe("processor", "size={'height': -1, 'width': 16}", with_processor(RGB, size={"height": -1, "width": 16}),
          names="size")
    probe("processor", "crop_size larger than the resized image (padded)",
          with_processor(RGB, size={"shortest_edge": 16}, crop_size={"height": 40, "width": 40}), expect="ok",
          check=shaped((1, 3, 40, 40)))
    probe("processor", "image_mean with 2 values", proc(RGB, image_mean=[0.5, 0.5]), names="image_mean")
    probe("processor", "image_std with a zero", proc(RGB, image_std=[0.2, 0.0, 0.2]), names="image_std",
          expect="either", check=shaped((1, 3, 16, 16)))
    probe("processor", "resample='bicubic' (a string)", with_processor(lambda: Image.new("RGB", (40, 30)),
                                                                       resample="bicubic",
                                                                       size={"shortest_edge": 16},
                                                                       crop_size={"height": 16, "width": 16}),
          names="resample")
    probe("processor", "return_tensors='xx'", lambda: processor()(RGB(), return_tensors="xx"), names="return_tensors")
    probe("processor", "input_data_format='channels_middle' (numpy image)",
          proc(lambda: c, input_data_format="channels_middle"),
          names="input_data_format")
    probe("processor", "do_convert_rgb=False with an RGBA image (4 channels, 3 means)",
          proc(lambda: RGB().convert("RGBA"), do_convert_rgb=False), names="image_mean")
    for factor in (0, 0.0, -1 / 255):
        probe("processor", f"rescale_factor={factor!r}", proc(lambda: c, rescale_factor=factor),
              names="rescale_factor")


# ----------------------------------------------------------------------------------------------------------- video
def video_model():
    def build():
        from modeling_dart import DartVideoMambaForVideoClassification

        torch.manual_seed(0)
        return DartVideoMambaForVideoClassification(tiny_config(backbone="videomamba", num_frames=2,
                                                                num_labels=3)).eval()

    return cached("video_model", build)


def video_forward(x, **kwargs):
    def fn():
        with torch.no_grad():
            return video_model()(x() if callable(x) else x, **kwargs)

    return fn


def video_processor():
    from modeling_dart import DartVideoProcessor

    return cached("video_processor", lambda: DartVideoProcessor(size={"shortest_edge": 16},
                                                                crop_size={"height": 16, "width": 16},
                                                                num_frames=2))


def vproc(videos, **kwargs):
    def fn():
        return video_processor()(videos() if callable(videos) else videos, return_tensors="pt",
                                 **kwargs)["pixel_values"]

    return fn


def register_video():
    clip = pixels(1, 2, 3, 64, 64, seed=5)
    bad = [
        ("4-D (B, C, H, W)", pixels(1, 3, 64, 64)),
        ("6-D", pixels(1, 1, 2, 3, 64, 64)),
        ("(B, C, T, H, W) layout", pixels(1, 3, 2, 64, 64)),
        ("channels last (B, T, H, W, C)", pixels(1, 2, 64, 64, 3)),
        ("no frames (T=0)", pixels(1, 0, 3, 64, 64)),
        ("empty batch", pixels(0, 2, 3, 64, 64)),
        ("uint8", torch.zeros(1, 2, 3, 64, 64, dtype=torch.uint8)),
        ("NaN frame", clip.clone().index_fill_(1, torch.tensor([1]), NAN)),
        ("4x4 frames", pixels(1, 2, 3, 4, 4)),
        ("numpy", np.zeros((1, 2, 3, 64, 64), np.float32)),
        ("None", None),
    ]
    for label, x in bad:
        probe("video", f"video pixel_values {label}", video_forward(x), names="pixel_values")
    probe("video", "video num_tokens=0", video_forward(clip, num_tokens=0), names="num_tokens")
    probe("video", "video score_normalization='frame'", video_forward(clip, score_normalization="frame"),
          names="score_normalization")
    probe("video", "video labels out of range", video_forward(clip, labels=torch.tensor([7])), names="labels")
    for frames in (1, 2, 5):
        probe("video", f"video T={frames} (model trained at 2)", video_forward(pixels(1, frames, 3, 64, 64, seed=6)),
              expect="ok", check=finite_output((1, 3), (1, frames, 16, 4)))
    probe("video", "video 8x8 frames", video_forward(pixels(2, 2, 3, 8, 8)), expect="ok", check=finite_output((2, 3)))

    def clip_pooling():
        from modeling_dart import DartVideoMambaForVideoClassification

        model = DartVideoMambaForVideoClassification(tiny_config(backbone="videomamba", num_frames=2, num_labels=3,
                                                                 video_score_pooling="clip")).eval()
        with torch.no_grad():
            return model(clip)

    probe("video", "video_score_pooling='clip'", clip_pooling, expect="ok", check=finite_output((1, 3)))

    # video processor
    frame = lambda: Image.fromarray(rgb16(), "RGB")
    probe("video", "processor: one frame [img] (T=1, sampled to 2)", vproc(lambda: [frame()]), expect="ok",
          check=shaped((1, 2, 3, 16, 16)))
    probe("video", "processor: numpy (T, H, W, C)", vproc(lambda: np.stack([rgb16()] * 3)), expect="ok",
          check=shaped((1, 2, 3, 16, 16)))
    probe("video", "processor: numpy T=1 (1, H, W, C)", vproc(lambda: rgb16()[None]), expect="ok",
          check=shaped((1, 2, 3, 16, 16)))
    probe("video", "processor: torch (T, C, H, W)",
          vproc(lambda: torch.from_numpy(np.moveaxis(np.stack([rgb16()] * 3), -1, 1).copy())), expect="ok",
          check=shaped((1, 2, 3, 16, 16)))
    probe("video", "processor: 5-D numpy batch", vproc(lambda: np.stack([np.stack([rgb16()] * 3)] * 2)), expect="ok",
          check=shaped((2, 2, 3, 16, 16)))
    probe("video", "processor: a single PIL image", vproc(frame), names="video")
    probe("video", "processor: empty list", vproc([]), names="video")
    probe("video", "processor: None", vproc(None), names="video")
    probe("video", "processor: num_frames=0", vproc(lambda: [frame()], num_frames=0), names="num_frames")
    probe("video", "processor: num_frames=2.5", vproc(lambda: [frame()], num_frames=2.5), names="num_frames")
    probe("video", "processor: num_frames=True", vproc(lambda: [frame()], num_frames=True), names="num_frames")
    probe("video", "processor: frames of different sizes",
          vproc(lambda: [frame(), Image.new("RGB", (20, 16))]), names="video")
    probe("video", "processor: uint16 frames > 255", vproc(lambda: np.stack([rgb16().astype(np.uint16) * 257] * 2)),
          names="video")
    probe("video", "processor: (B, C, T, H, W) 5-D layout (T=5)",
          vproc(lambda: np.zeros((1, 3, 5, 16, 16), np.uint8)), names="video")
    probe("video", "processor: missing video file", vproc("/no/such/clip.mp4"), names="/no/such/clip.mp4",
          errors=(ValueError, TypeError, FileNotFoundError))

    def corrupt_video():
        folder = tmp("video")
        (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
        return video_processor()(str(folder / "broken.mp4"), return_tensors="pt")

    probe("video", "processor: corrupt video file", corrupt_video, names="broken.mp4")


# ---------------------------------------------------------------------------------------------- reshaper and RMT
def reshaper_backbone(kind="convnext"):
    from transformers import ConvNextConfig

    from modeling_dart import RmtConfig

    if kind == "rmt":
        return RmtConfig(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_heads=[2, 2, 3, 4],
                         heads_ranges=[4, 4, 6, 6], mlp_ratios=[2, 2, 2, 2], projection=16, drop_path_rate=0.0,
                         num_labels=3)
    return ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)


def reshaper_config(**overrides):
    """64x64 inputs warped to 32x32 (8-pixel cells on a 4x4 score grid) in front of a tiny ConvNeXt; with
    `learned=True` a MobileNetV3-Small scorer cut after 4 blocks, else the uniform scorer."""
    from modeling_dart import DartReshaperConfig

    learned = overrides.pop("learned", False)
    fields = {"backbone_config": reshaper_backbone(), "image_size": 64, "patch_size": 8, "score_grid_size": 4,
              "scorer": "uniform"}
    if learned:
        fields.update(scorer="learned", scorer_trunk="mobilenet_v3_small", scorer_trunk_depth=4)
    fields.update(overrides)
    return DartReshaperConfig(**fields)


def reshaper_model():
    def build():
        from modeling_dart import DartReshaperForImageClassification

        torch.manual_seed(0)
        return DartReshaperForImageClassification(reshaper_config(learned=True)).eval()

    return cached("reshaper_model", build)


def reshaper_forward(x=None, **kwargs):
    def fn():
        with torch.no_grad():
            return reshaper_model()(x() if callable(x) else x, **kwargs)

    return fn


def warped_shape(shape):
    def check(out):
        if tuple(out.warped_pixel_values.shape) != tuple(shape):
            return f"warped image {tuple(out.warped_pixel_values.shape)} != {shape}"
        edges = (out.row_edges, out.col_edges)
        if not all(torch.isfinite(e).all() and (e.diff(dim=-1) >= 0).all() for e in edges):
            return "edges not finite and increasing"
        logits = getattr(out, "logits", None)
        return True if logits is None or torch.isfinite(logits).all() else "NaN/inf logits"

    return check


def register_reshaper():
    from transformers import BertConfig

    from modeling_dart import (
        DartImageReshaper,
        DartReshaperForImageClassification,
        RmtConfig,
        RmtForImageClassification,
    )
    from modeling_dart.reshaper_dart import unwarp, warped_to_input

    # DartReshaperConfig: the backbone, each field, and the relations between fields
    bert = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    for label, value in (("BertConfig (not an image model)", bert), ("{'model_type': 'bert'}", {"model_type": "bert"}),
                         ("dict without model_type", {"hidden_size": 8}),
                         ("{'model_type': 'no_such_model'}", {"model_type": "no_such_model"}),
                         ("the string 'rmt'", "rmt"), ("3", 3)):
        probe("reshaper", f"DartReshaperConfig(backbone_config={label})",
              lambda v=value: reshaper_config(backbone_config=v), names="backbone_config")
    fields = [
        ("image_size", 72), ("image_size", "64"), ("image_size", 0), ("patch_size", 0), ("patch_size", 8.0),
        ("num_channels", 4), ("downscale_factor", 0), ("downscale_factor", True), ("output_size", [24, 30]),
        ("output_size", 20), ("output_size", "32"), ("score_grid_size", 0), ("scorer", "random"),
        ("scorer_trunk", "resnet50"), ("scorer_head", "v3"), ("scorer_hidden_size", 0), ("scorer_trunk_depth", 100),
        ("scorer_max_density_ratio", 1.0), ("freeze_scorer_trunk", "yes"), ("score_normalization", "global"),
        ("first_edge_at_one", 1), ("edge_scale_from_first_image", "no"), ("column_sampling", "rows"),
    ]
    for name, value in fields:
        probe("reshaper", f"DartReshaperConfig({name}={value!r})",
              lambda n=name, v=value: reshaper_config(learned=True, **{n: v}), names=name)

    def set_then_build(name, value):
        def fn():
            config = reshaper_config()
            setattr(config, name, value)
            return DartReshaperForImageClassification(config)

        return fn

    probe("reshaper", "config.image_size = 72 (set after construction), then a model built",
          set_then_build("image_size", 72), names="image_size")
    probe("reshaper", "config.output_size = [24, 30] (set after construction), then a model built",
          set_then_build("output_size", [24, 30]), names="output_size")
    probe("reshaper", "DartReshaperForImageClassification(RmtConfig())",
          lambda: DartReshaperForImageClassification(RmtConfig()), names="config")

    # the reshaper classifier's forward
    base = pixels(2, 3, 64, 64, seed=7)
    bad_pixels = [
        ("40x64 (not multiples of patch_size * downscale_factor = 16)", pixels(1, 3, 40, 64)),
        ("64x70 (width not a multiple of 16)", pixels(1, 3, 64, 70)),
        ("4 channels", pixels(1, 4, 64, 64)),
        ("3-D", pixels(3, 64, 64)),
        ("uint8", torch.zeros(1, 3, 64, 64, dtype=torch.uint8)),
        ("one NaN pixel", base.clone().index_put_((torch.tensor([1]), torch.tensor([0]), torch.tensor([3]),
                                                   torch.tensor([3])), torch.tensor(NAN))),
        ("None", None),
    ]
    for label, x in bad_pixels:
        probe("reshaper", f"reshaper model pixel_values {label}", reshaper_forward(x), names="pixel_values")
    for value in ((20, 32), 0, "32", (32,)):
        probe("reshaper", f"reshaper model output_size={value!r}", reshaper_forward(base, output_size=value),
              names="output_size")
    probe("reshaper", "reshaper model score_normalization='global'",
          reshaper_forward(base, score_normalization="global"), names="score_normalization")
    probe("reshaper", "reshaper model labels out of range", reshaper_forward(base, labels=torch.tensor([0, 7])),
          names="labels")
    probe("reshaper", "reshaper model 96x64 input (valid edge)", reshaper_forward(pixels(1, 3, 96, 64)), expect="ok",
          check=warped_shape((1, 3, 48, 32)))
    probe("reshaper", "reshaper model 50x70 input with output_size=16 (valid edge)",
          reshaper_forward(pixels(1, 3, 50, 70), output_size=16), expect="ok", check=warped_shape((1, 3, 16, 16)))

    # the bare reshaper and its coordinate maps
    for name, value in (("patch_size", 0), ("downscale_factor", 0), ("column_sampling", "rows"),
                        ("first_edge_at_one", 1), ("scorer", "random"), ("output_size", (24, 32))):
        probe("reshaper", f"DartImageReshaper({name}={value!r})",
              lambda n=name, v=value: DartImageReshaper(scorer="uniform", **{n: v}) if n != "scorer"
              else DartImageReshaper(scorer=v), names=name)

    def bare(x, **kwargs):
        def fn():
            with torch.no_grad():
                return DartImageReshaper(scorer="uniform")(x, **kwargs)

        return fn

    probe("reshaper", "DartImageReshaper on 48x64 (not multiples of 32)", bare(pixels(1, 3, 48, 64)),
          names=("pixel_values", "32"))
    probe("reshaper", "DartImageReshaper score_map of the wrong grid", bare(pixels(1, 3, 64, 64),
                                                                           score_map=torch.ones(1, 4, 4)),
          names="score_map")
    probe("reshaper", "DartImageReshaper score_map one-hot (valid edge)",
          bare(pixels(1, 3, 64, 64), score_map=torch.zeros(1, 14, 14).index_fill_(1, torch.tensor([3]), 1.0)),
          expect="ok", check=warped_shape((1, 3, 32, 32)))
    for label, fill in (("a NaN", NAN), ("an inf", INF), ("a negative score", -1.0)):
        scores = torch.ones(1, 14, 14).index_fill_(1, torch.tensor([3]), fill)
        probe("reshaper", f"DartImageReshaper score_map with {label}", bare(pixels(1, 3, 64, 64), score_map=scores),
              names="score_map")
    probe("reshaper", "DartImageReshaper score_map all zero (valid edge: the uniform warp)",
          bare(pixels(1, 3, 64, 64), score_map=torch.zeros(1, 14, 14)), expect="ok", check=warped_shape((1, 3, 32, 32)))
    edges = torch.tensor([[0.0, 10.0, 64.0]])
    probe("reshaper", "warped_to_input with 1-D edges", lambda: warped_to_input(torch.zeros(1, 4), edges[0], 16),
          names="edges")
    from modeling_dart import reshaper_dart as geometry

    strip = torch.tensor([[0.0, 30.0, 64.0, 100.0, 128.0]])
    geometry_cases = [
        ("warped_to_input patch_size=0", lambda: warped_to_input(torch.zeros(1, 4), edges, 0), "patch_size"),
        ("warped_to_input patch_size=-8", lambda: warped_to_input(torch.arange(4.0)[None], edges, -8), "patch_size"),
        ("input_to_warped patch_size=0", lambda: geometry.input_to_warped(torch.zeros(1, 4), edges, 0), "patch_size"),
        ("warped_to_input positions of another batch", lambda: warped_to_input(torch.zeros(2, 4), edges, 8),
         "positions"),
        ("input_to_warped 1-D positions", lambda: geometry.input_to_warped(torch.zeros(4), edges, 8), "positions"),
        ("input_to_warped decreasing edges", lambda: geometry.input_to_warped(torch.arange(4.0)[None] * 10,
                                                                              edges.flip(1), 8), "edges"),
        ("input_to_warped NaN edges", lambda: geometry.input_to_warped(torch.zeros(1, 4), torch.full((1, 3), NAN), 8),
         "edges"),
        ("unwarp height=0", lambda: unwarp(maps, edges, edges, 16, 0, 64), "height"),
        ("unwarp width=64.5", lambda: unwarp(maps, edges, edges, 16, 64, 64.5), "width"),
        ("unwarp patch_size=0", lambda: unwarp(maps, edges, edges, 0, 64, 64), "patch_size"),
        ("sample_separable mode='cubic'", lambda: geometry.sample_separable(maps, torch.zeros(1, 4), torch.zeros(1, 4),
                                                                            "cubic"), "mode"),
        ("map_coordinates warped_size=0", lambda: geometry.map_coordinates(torch.zeros(1, 4), 0, 16), "warped_size"),
        ("uniform_edges num_parts=0", lambda: geometry.uniform_edges(1, 0, 64, torch.float32), "num_parts"),
        ("marginal_quantile_cuts num_rows=0", lambda: geometry.marginal_quantile_cuts(torch.full((1, 4, 4), 1 / 16),
                                                                                      0, 2), "num_rows"),
        ("marginal_quantile_cuts 2-D pdf", lambda: geometry.marginal_quantile_cuts(torch.full((4, 4), 1 / 16), 2, 2),
         "pdf"),
        ("warp_labels patch_size=0", lambda: geometry.warp_labels(torch.zeros(1, 64, 64, dtype=torch.long), edges,
                                                                  strip, 2, 0), "patch_size"),
        ("warp_pixels column_sampling='rows'", lambda: geometry.warp_pixels(pixels(1, 3, 64, 64), edges, strip, 2, 8,
                                                                            "rows"), "column_sampling"),
        ("warp_pixels pixels of another batch than the warp", lambda: geometry.warp_pixels(pixels(2, 3, 64, 64), edges,
                                                                                           strip, 2, 8),
         "pixel_values"),
        ("warp_pixels num_cols that does not fit the edges", lambda: geometry.warp_pixels(pixels(1, 3, 64, 64), edges,
                                                                                          strip, 3, 8), "edges"),
    ]
    maps = torch.zeros(1, 2, 32, 32)
    for label, fn, name in geometry_cases:
        probe("reshaper", label, fn, names=name)
    probe("reshaper", "unwarp mode='bicubic'", lambda: unwarp(maps, edges, edges, 16, 64, 64, mode="bicubic"),
          names="mode")
    probe("reshaper", "unwarp maps 3-D", lambda: unwarp(maps[0], edges, edges, 16, 64, 64), names="maps")
    probe("reshaper", "unwarp maps of another batch than the warp", lambda: unwarp(torch.zeros(2, 2, 32, 32), edges,
                                                                                    edges, 16, 64, 64), names="maps")
    probe("reshaper", "unwarp integer maps, bilinear", lambda: unwarp(maps.long(), edges, edges, 16, 64, 64),
          names="maps")

    # RMT
    rmt_fields = {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [2, 2, 3, 4],
                  "heads_ranges": [4, 4, 6, 6], "mlp_ratios": [2, 2, 2, 2], "projection": 16, "num_labels": 3}
    for name, value in (("embed_dims", [8, 16, 24, 30]), ("depths", [1, 1, 1]), ("depths", [1, 0, 1, 1]),
                        ("num_heads", [2, 2, 3, 0]), ("mlp_ratios", [2, 2, 2, -1]), ("drop_path_rate", 1.5),
                        ("hidden_act", "gleu"), ("layerscales", [1, 0, 0, 0]), ("projection", 0)):
        probe("reshaper", f"RmtConfig({name}={value!r})", lambda n=name, v=value: RmtConfig(**{**rmt_fields, n: v}),
              names=name)
    probe("reshaper", "RmtConfig.from_preset('xl')", lambda: RmtConfig.from_preset("xl"), names="xl")
    for typo, real in (("embed_dim", "embed_dims"), ("heads_range", "heads_ranges"), ("layerscale", "layerscales")):
        probe("reshaper", f"RmtConfig.from_preset('t3', {typo}=...) near miss",
              lambda t=typo: RmtConfig.from_preset("t3", **{t: 1}), names=real, expect="warn")

    def rmt_model():
        return cached("rmt_model", lambda: RmtForImageClassification(RmtConfig(**rmt_fields,
                                                                                drop_path_rate=0.0)).eval())

    def rmt_forward(x, **kwargs):
        def fn():
            with torch.no_grad():
                return rmt_model()(x, **kwargs)

        return fn

    one_nan = pixels(2, 3, 64, 64, seed=3).index_put_((torch.tensor([1]), torch.tensor([0]), torch.tensor([5]),
                                                       torch.tensor([7])), torch.tensor(NAN))
    for label, x in (("4 channels", pixels(1, 4, 64, 64)), ("uint8", torch.zeros(1, 3, 64, 64, dtype=torch.uint8)),
                     ("3-D", pixels(3, 64, 64)), ("None", None), ("one NaN pixel", one_nan),
                     ("an empty side (0x8)", pixels(1, 3, 0, 8))):
        probe("reshaper", f"RMT pixel_values {label}", rmt_forward(x), names="pixel_values")
    probe("reshaper", "RMT 96x64 input (valid edge)", rmt_forward(pixels(1, 3, 96, 64)), expect="ok",
          check=finite_output((1, 3)))
    probe("reshaper", "RMT 1x1 input (valid edge)", rmt_forward(pixels(1, 3, 1, 1)), expect="ok",
          check=finite_output((1, 3)))
    rmt_base = pixels(2, 3, 64, 64, seed=4)
    probe("reshaper", "RMT float64 input (valid edge)", rmt_forward(rmt_base.double()), expect="ok",
          check=close_to(lambda: rmt_forward(rmt_base)().logits, 1e-5))
    probe("reshaper", "RMT empty batch", rmt_forward(pixels(0, 3, 64, 64)), expect="either",
          check=finite_output((0, 3)))
    for label, value in (("out of range [0, 7]", torch.tensor([0, 7])), ("negative [0, -2]", torch.tensor([0, -2])),
                         ("batch mismatch (3,)", torch.tensor([0, 1, 2])), ("python list", [0, 1]),
                         ("float (2,)", torch.tensor([1.0, 0.0])),
                         ("multi-hot with 2.0", torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))):
        probe("reshaper", f"RMT labels {label}", rmt_forward(rmt_base, labels=value), names="labels")

    def rmt_loss_check(labels):
        def check(out):
            keep = labels != -100
            want = torch.nn.functional.cross_entropy(rmt_forward(rmt_base)().logits[keep], labels[keep])
            return True if abs(float(out.loss - want)) < 1e-5 else f"loss {float(out.loss):.4f} != {float(want):.4f}"

        return check

    probe("reshaper", "RMT labels [2, -100] (valid edge)", rmt_forward(rmt_base, labels=torch.tensor([2, -100])),
          expect="ok", check=rmt_loss_check(torch.tensor([2, -100])))

    def headless_with_labels():
        model = RmtForImageClassification(RmtConfig(**{**rmt_fields, "num_labels": 0}, drop_path_rate=0.0)).eval()
        with torch.no_grad():
            return model(rmt_base, labels=torch.tensor([0, 1]))

    probe("reshaper", "RMT with num_labels=0 given labels", headless_with_labels, names="labels")
    from modeling_dart.modeling_rmt import rmt_decay_rates, rmt_rotary_angles

    probe("reshaper", "rmt_rotary_angles(key_dim=3)", lambda: rmt_rotary_angles(3), names="key_dim")
    probe("reshaper", "rmt_rotary_angles(8, rope_theta=0.0)", lambda: rmt_rotary_angles(8, 0.0), names="rope_theta")
    probe("reshaper", "rmt_decay_rates(num_heads=0)", lambda: rmt_decay_rates(0, 2, 4), names="num_heads")
    probe("reshaper", "rmt_decay_rates(heads_range=-1)", lambda: rmt_decay_rates(2, 2, -1), names="heads_range")


# -------------------------------------------------------------------------------------- reshaper converters (darmt)
def register_reshaper_converters():
    from conversion import convert_dart_original as conv
    from conversion import convert_rmt_original as rmt_cli

    darmt = fixture("darmt_l6_reduced.pth")
    token_vit, token_vim = fixture("darvit_tiny_depth2.pth"), fixture("darvim_tiny_depth2.pth")

    def darmt_state():
        return cached("darmt_state", lambda: torch.load(darmt, map_location="cpu", weights_only=True)["model"])

    def saved(name, state_fn):
        """A checkpoint holding `state_fn()`, written for one probe (and kept: a refusal must not touch it)."""
        folder = tmp(name)
        path = folder / f"{name}.pth"
        torch.save({"model": state_fn()}, path)
        keep(path)
        return path, fresh(folder / "out")

    def cli(main, name, state_fn, extra):
        def fn():
            path, out = saved(name, state_fn)
            return call_main(main, ["--checkpoint", path, "--output_dir", out, *extra])

        return fn

    def plain(kind):
        common = {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "cls_token": torch.zeros(1, 1, 8),
                  "head.weight": torch.zeros(4, 8)}
        if kind == "vim":
            return {**common, "layers.0.mixer.in_proj.weight": torch.zeros(32, 8), "norm_f.weight": torch.ones(8)}
        return {**common, "blocks.0.attn.qkv.weight": torch.zeros(24, 8), "norm.weight": torch.ones(8)}

    for kind, label in (("vit", "a ViT/DeiT"), ("vim", "a Vision Mamba")):
        probe("convert_darmt", f"{label} release checkpoint as --variant darmt_l6",
              cli(conv.main, kind, lambda k=kind: plain(k), ["--variant", "darmt_l6"]), names="convert_vit_to_dart")
        probe("convert_rmt", f"{label} release checkpoint",
              cli(rmt_cli.main, kind, lambda k=kind: plain(k), []), names="convert_vit_to_dart")
    for path, label in ((token_vit, "darvit_tiny"), (token_vim, "darvim_tiny")):
        if path is None:
            continue
        probe("convert_darmt", f"a token {label} checkpoint as --variant darmt_l6",
              lambda p=path: call_main(conv.main, ["--variant", "darmt_l6", "--checkpoint", p, "--output_dir",
                                                   fresh(tmp("token") / "out")]), names=("token DART", "--variant"))
        probe("convert_rmt", f"a token {label} checkpoint",
              lambda p=path: call_main(rmt_cli.main, ["--checkpoint", p, "--output_dir", fresh(tmp("token") / "out")]),
              names="convert_dart_original")
    if darmt is None:
        return

    for variant in ("darvit_tiny", "darvim_sm"):
        probe("convert_darmt", f"the darmt checkpoint as --variant {variant}",
              lambda v=variant: call_main(conv.main, ["--variant", v, "--checkpoint", darmt, "--output_dir",
                                                      fresh(tmp("darmt_variant") / "out")]),
              names="--variant darmt_l6")

    def edited(key, edit):
        def state():
            result = dict(darmt_state())
            if edit is None:
                del result[key]
            else:
                result[key] = edit(result[key].clone())
            return result

        return state

    reversed_decay = lambda t: t.flip(0)
    buffer_cases = [
        ("layers.2.Relpos.decay", lambda t: t * 1.001, "decays off by 0.1%"),
        ("layers.2.Relpos.decay", reversed_decay, "decays in reverse head order"),
        ("layers.3.Relpos.decay", lambda t: t[:5], "5 decays for 6 heads"),
        ("layers.1.Relpos.decay", lambda t: -t, "positive decays"),
        ("layers.1.Relpos.decay", lambda t: t.fill_(NAN), "NaN decays"),
        ("layers.0.Relpos.angle", lambda t: t * 0.999, "angles off by 0.1%"),
        ("layers.3.Relpos.angle", lambda t: t[:16], "angles of another length"),
        ("layers.1.Relpos.angle", None, "angle buffer missing"),
        ("layers.2.Relpos.decay", None, "decay buffer missing"),
        ("layers.0.Relpos.decay", lambda t: t[:0], "an empty decay buffer"),
        ("layers.3.Relpos.decay", lambda t: t.half(), "float16 decays"),
    ]
    rmt_part = lambda state_fn: (lambda: {k: v for k, v in state_fn().items()
                                          if not k.startswith("pre_image.")})
    for key, edit, label in buffer_cases:
        state_fn = edited(key, edit)
        probe("convert_darmt", f"darmt_l6 with {label} ({key})",
              cli(conv.main, "darmt_buffers", state_fn, ["--variant", "darmt_l6"]), names=key)
        probe("convert_rmt", f"RMT with {label} ({key})", cli(rmt_cli.main, "rmt_buffers", rmt_part(state_fn), []),
              names=key)
    half = lambda: {k: v.half() if v.is_floating_point() else v for k, v in darmt_state().items()}
    probe("convert_darmt", "darmt_l6 saved in float16", cli(conv.main, "darmt_half", half, ["--variant", "darmt_l6"]),
          names=("Relpos", "float16"))
    probe("convert_darmt", "darmt_l6 with a Relpos buffer of a fifth stage",
          cli(conv.main, "darmt_stage", lambda: {**darmt_state(), "layers.4.Relpos.angle": torch.zeros(32)},
              ["--variant", "darmt_l6"]), names="layers.4")
    probe("convert_darmt", "the RMT part alone as --variant darmt_l6",
          cli(conv.main, "rmt_only", rmt_part(darmt_state), ["--variant", "darmt_l6"]), names="convert_rmt_original")
    probe("convert_rmt", "the darmt checkpoint without --rmt_only",
          lambda: call_main(rmt_cli.main, ["--checkpoint", darmt, "--output_dir", fresh(tmp("rmt") / "out")]),
          names=("--rmt_only", "darmt_l6"))
    probe("convert_rmt", "--preset bogus",
          lambda: call_main(rmt_cli.main, ["--checkpoint", darmt, "--rmt_only", "--preset", "bogus", "--output_dir",
                                           fresh(tmp("rmt") / "out")]), names="--preset")

    def rmt_ok():
        out = tmp("rmt_ok") / "out"
        keep(darmt)
        return call_main(rmt_cli.main, ["--checkpoint", darmt, "--rmt_only", "--output_dir", out])

    probe("convert_rmt", "the darmt checkpoint's RMT part with --rmt_only (real conversion)", rmt_ok, expect="ok",
          check=lambda run: True if "error" not in run.err.lower() else run.err[-200:])


# --------------------------------------------------------------------------------------------------------- loading
def saved_image_folder() -> Path:
    def build():
        folder = TMP_ROOT / "saved_image_model"
        image_model().save_pretrained(folder)
        return folder

    return cached("saved_image_folder", build)


def edited_copy(edit_config=None, edit_weights=None, name="copy") -> Path:
    from safetensors.torch import load_file, save_file

    destination = tmp(name) / "model"
    shutil.copytree(saved_image_folder(), destination)
    if edit_config is not None:
        path = destination / "config.json"
        result = edit_config(json.loads(path.read_text()))
        path.write_text(result if isinstance(result, str) else json.dumps(result))
    if edit_weights is not None:
        weights = load_file(destination / "model.safetensors")
        edit_weights(weights)
        save_file(weights, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


def load(folder_fn, cls_name="DartForImageClassification", **kwargs):
    def fn():
        import transformers

        import modeling_dart

        cls = getattr(modeling_dart, cls_name, None) or getattr(transformers, cls_name)
        folder = folder_fn()
        keep(folder)
        return cls.from_pretrained(folder, **kwargs)

    return fn


def register_loading():
    key = "classifier.bias"
    OS_OK = (ValueError, TypeError, OSError)

    def missing_tensor():
        folder = edited_copy(edit_weights=lambda w: w.pop(key))
        from modeling_dart import DartForImageClassification

        return DartForImageClassification.from_pretrained(folder, output_loading_info=True)

    probe("loading", "safetensors missing a tensor: load report lists it", missing_tensor, expect="ok",
          check=lambda r: key in r[1]["missing_keys"] or f"missing_keys={r[1]['missing_keys']}")

    def mismatched():
        return edited_copy(edit_weights=lambda w: w.__setitem__(key, torch.zeros(7)))

    probe("loading", "tensor of the wrong shape", load(mismatched), names=key, errors=OS_OK)

    def unexpected():
        return edited_copy(edit_weights=lambda w: w.__setitem__("dart.extra.weight", torch.zeros(2)))

    probe("loading", "unexpected extra tensor: load report lists it",
          lambda: load(unexpected, output_loading_info=True)(), expect="ok",
          check=lambda r: "dart.extra.weight" in r[1]["unexpected_keys"] or f"{r[1]}")

    def truncated():
        folder = edited_copy(name="truncated")
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
        return folder

    probe("loading", "truncated model.safetensors", load(truncated), names=("safetensors",), errors=OS_OK)
    probe("loading", "corrupt config.json", load(lambda: edited_copy(lambda c: "{not json")),
          names="config.json", errors=OS_OK)
    probe("loading", "config.json with model_type 'vit'",
          load(lambda: edited_copy(lambda c: {**c, "model_type": "vit"})), names=("vit",), expect="warn")
    probe("loading", "config.json hidden_size 'big'", load(lambda: edited_copy(lambda c: {**c, "hidden_size": "big"})),
          names="hidden_size")
    probe("loading", "config.json freeze_scorer_trunk 'false'",
          load(lambda: edited_copy(lambda c: {**c, "freeze_scorer_trunk": "false"})), names="freeze_scorer_trunk")
    probe("loading", "config.json num_tokens 10**6", load(lambda: edited_copy(lambda c: {**c, "num_tokens": 10**6})),
          names="num_tokens")
    probe("loading", "config.json score_normalization 'global'",
          load(lambda: edited_copy(lambda c: {**c, "score_normalization": "global"})), names="score_normalization")
    probe("loading", "config.json near-miss key num_token",
          load(lambda: edited_copy(lambda c: {**c, "num_token": 8})), names="num_tokens", expect="warn")

    def no_config():
        folder = edited_copy(name="noconfig")
        (folder / "config.json").unlink()
        return folder

    probe("loading", "folder without config.json", load(no_config), names="config.json", errors=OS_OK)
    probe("loading", "missing folder", load(lambda: TMP_ROOT / "no" / "such" / "model"), names="no/such/model",
          errors=OS_OK)
    probe("loading", "AutoConfig of a corrupt config.json",
          load(lambda: edited_copy(lambda c: "[1, 2"), cls_name="AutoConfig"), names="config.json", errors=OS_OK)

    def video_folder():
        from modeling_dart import DartVideoMambaForVideoClassification

        folder = tmp("video_folder") / "model"
        DartVideoMambaForVideoClassification(tiny_config(backbone="videomamba", num_frames=2)).save_pretrained(folder)
        return folder

    probe("loading", "a video folder loaded as an image classifier", load(video_folder), names=("video",))

    def legacy_video():
        folder = video_folder()
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "model_type": "dart"}))
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(folder)

    probe("loading", "legacy video folder (model_type 'dart') -> DartVideoConfig", legacy_video, expect="ok",
          check=lambda c: type(c).__name__ == "DartVideoConfig" or type(c).__name__)

    def processor_corrupt():
        from transformers import AutoImageProcessor

        folder = edited_copy(name="proc")
        (folder / "preprocessor_config.json").write_text("{oops")
        keep(folder)
        return AutoImageProcessor.from_pretrained(folder)

    probe("loading", "corrupt preprocessor_config.json", processor_corrupt, names="preprocessor_config.json",
          errors=OS_OK)

    def model_from_video_config():
        from modeling_dart import DartModel

        return DartModel(tiny_config(backbone="videomamba", num_frames=2))

    probe("loading", "DartModel(DartVideoConfig)", model_from_video_config, names="DartVideoConfig")


# ------------------------------------------------------------------------------------------------------ converters
def fixture(name) -> Path | None:
    from tests.conftest import fixtures_dir

    path = fixtures_dir() / name
    return path if path.is_file() else None


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def malicious(path: Path) -> tuple[Path, Path]:
    marker = path.parent / "PWNED"
    with open(path, "wb") as handle:
        pickle.dump({"model": _Payload(marker)}, handle)
    return path, marker


def pickle_case(main, extra):
    """A checkpoint whose unpickling would create a marker file: refused, and the marker never appears."""

    def fn():
        folder = tmp("pickle")
        path, marker = malicious(folder / "evil.pth")
        keep(path)
        run = call_main(main, ["--checkpoint", path, "--output_dir", fresh(folder / "out"), *extra])
        if marker.exists():
            return CliRun(0, run.out, run.err + "\nTHE PICKLE RAN")
        return run

    return fn


def register_converters():
    from conversion import convert_dart_original as conv
    from conversion import convert_videomamba_original as cv
    from conversion import convert_vit_to_dart as vit_cli

    checkpoint = fixture("darvit_tiny_depth2.pth")

    # ---------------------------------------------------------------- convert_dart_original.py
    def dart(argv_fn, **kw):
        def fn():
            return call_main(conv.main, argv_fn())

        return fn

    def dart_case(name, argv_fn, names, expect="error", check=None):
        probe("convert_dart", name, dart(argv_fn), names=names, expect=expect, check=check)

    def copied_checkpoint(folder):
        target = folder / "x.pth"
        shutil.copy(checkpoint, target)
        return target

    if checkpoint is not None:
        def same_folder():
            folder = tmp("dart_same")
            ckpt = copied_checkpoint(folder)
            (folder / "notes.txt").write_text("mine")
            keep(folder)
            return ["--variant", "darvit_tiny", "--checkpoint", ckpt, "--output_dir", folder, "--overwrite"]

        dart_case("output folder holds the checkpoint (--overwrite)", same_folder, ("--checkpoint", "--output_dir"))

        def output_file():
            folder = tmp("dart_file")
            target = folder / "taken"
            target.write_text("a file")
            keep(target)
            return ["--variant", "darvit_tiny", "--checkpoint", checkpoint, "--output_dir", target, "--overwrite"]

        dart_case("--output_dir is an existing file", output_file, "--output_dir")

        def under_file():
            folder = tmp("dart_under")
            target = folder / "taken"
            target.write_text("a file")
            keep(target)
            return ["--variant", "darvit_tiny", "--checkpoint", checkpoint, "--output_dir", target / "sub"]

        dart_case("--output_dir under an existing file", under_file, "--output_dir")

        def non_empty():
            folder = tmp("dart_nonempty")
            (folder / "model.safetensors").write_bytes(b"previous")
            keep(folder)
            return ["--variant", "darvit_tiny", "--checkpoint", checkpoint, "--output_dir", folder]

        dart_case("non-empty --output_dir without --overwrite", non_empty, "--overwrite")

        def out(name="out"):
            return fresh(tmp("dart_" + name) / "out")

        dart_case("--variant bogus", lambda: ["--variant", "bogus", "--checkpoint", checkpoint, "--output_dir", out()],
                  "--variant")
        dart_case("--weights bogus", lambda: ["--variant", "darvit_tiny", "--checkpoint", checkpoint, "--weights",
                                              "bogus", "--output_dir", out()], "--weights")
        dart_case("missing --checkpoint file", lambda: ["--variant", "darvit_tiny", "--checkpoint",
                                                        TMP_ROOT / "none.pth", "--output_dir", out()],
                  ("none.pth",))
        dart_case("--checkpoint is a folder", lambda: ["--variant", "darvit_tiny", "--checkpoint", tmp("dir"),
                                                       "--output_dir", out()], (("--checkpoint", "checkpoint"),))

        def nan_checkpoint():
            folder = tmp("dart_nan")
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            state["model"]["head.bias"][3] = NAN
            torch.save(state, folder / "nan.pth")
            keep(folder / "nan.pth")
            return ["--variant", "darvit_tiny", "--checkpoint", folder / "nan.pth", "--output_dir",
                    fresh(folder / "out")]

        dart_case("checkpoint with a NaN weight", nan_checkpoint, ("NaN",))

        probe("convert_dart", "malicious pickle checkpoint", pickle_case(conv.main, ["--variant", "darvit_tiny"]),
              names=("evil.pth",))

        def text_checkpoint():
            folder = tmp("dart_text")
            (folder / "x.pth").write_text("not a checkpoint")
            return ["--variant", "darvit_tiny", "--checkpoint", folder / "x.pth", "--output_dir", fresh(folder / "o")]

        dart_case("text file as checkpoint", text_checkpoint, ("x.pth",))

        def empty_checkpoint():
            folder = tmp("dart_empty")
            (folder / "x.pth").write_bytes(b"")
            return ["--variant", "darvit_tiny", "--checkpoint", folder / "x.pth", "--output_dir", fresh(folder / "o")]

        dart_case("empty checkpoint file", empty_checkpoint, ("x.pth",))
        dart_case("checkpoint of another variant (darvit_sm)",
                  lambda: ["--variant", "darvit_sm", "--checkpoint", checkpoint, "--output_dir", out("variant")],
                  (("--variant", "darvit_sm", "shape"),))

        def overwrite_ok():
            folder = tmp("dart_overwrite") / "out"
            folder.mkdir()
            (folder / "notes.txt").write_text("mine")
            (folder / "config.json").write_text("{}")
            keep(folder / "notes.txt", checkpoint)
            return ["--variant", "darvit_tiny", "--checkpoint", checkpoint, "--output_dir", folder, "--overwrite"]

        probe("convert_dart", "--overwrite into a folder with an unrelated file (real conversion)",
              dart(overwrite_ok), expect="ok",
              check=lambda run: True if "error" not in run.err.lower() else run.err[-200:])

    # ---------------------------------------------------------------- convert_vit_to_dart.py
    from tests.test_vit_conversion import _save_vit

    def vit_source(name="vit"):
        source = tmp(name) / "vit"
        _save_vit(source, image_size=32)
        return source

    def vit(argv_fn):
        return lambda: call_main(vit_cli.main, argv_fn())

    def vit_case(name, argv_fn, names, expect="error", check=None):
        probe("convert_vit", name, vit(argv_fn), names=names, expect=expect, check=check)

    def vit_with(*extra, out_name="out"):
        def argv():
            source = vit_source()
            keep(source)
            return ["--source", source, "--output_dir", fresh(source.parent / out_name), *extra]

        return argv

    def vit_same(sub=False):
        def argv():
            source = vit_source()
            keep(source)
            return ["--source", source, "--output_dir", source / "dart" if sub else source, "--overwrite"]

        return argv

    vit_case("--output_dir = --source (--overwrite)", vit_same(), "--source")
    vit_case("--output_dir inside --source", vit_same(True), "--source")
    vit_case("missing --source folder", lambda: ["--source", TMP_ROOT / "no_vit", "--output_dir",
                                                fresh(tmp("vit_missing") / "out")], (("--source", "no_vit"),))
    vit_case("--revision with a local --source", vit_with("--revision", "v2"), "--revision")
    for flag, value in (("--num_tokens", "0"), ("--num_tokens", "-1"), ("--num_tokens", "abc"),
                        ("--image_size", "0"), ("--score_grid_size", "0"), ("--num_tokens", "2.5")):
        vit_case(f"{flag} {value}", vit_with(flag, value), flag)
    vit_case("--num_tokens 10**6", vit_with("--num_tokens", str(10**6)), "num_tokens")
    vit_case("--scorer_trunk_depth 99 (learned)", vit_with("--scorer", "learned", "--scorer_trunk_depth", "99"),
             "scorer_trunk_depth")
    vit_case("--image_size 8 (below the patch size 16)", vit_with("--image_size", "8"), "image_size")
    vit_case("--freeze_scorer_trunk maybe", vit_with("--freeze_scorer_trunk", "maybe"), "--freeze_scorer_trunk")

    def vit_output_file():
        source = vit_source()
        target = source.parent / "taken"
        target.write_text("a file")
        keep(target, source)
        return ["--source", source, "--output_dir", target]

    vit_case("--output_dir is an existing file", vit_output_file, "--output_dir")

    def vit_non_empty():
        source = vit_source()
        out_dir = source.parent / "out"
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")
        keep(out_dir, source)
        return ["--source", source, "--output_dir", out_dir]

    vit_case("non-empty --output_dir without --overwrite", vit_non_empty, "--overwrite")

    def vit_edit(edit_weights=None, edit_config=None, name="vit_edit"):
        def argv():
            from safetensors.torch import load_file, save_file

            source = vit_source(name)
            if edit_weights is not None:
                tensors = load_file(source / "model.safetensors")
                edit_weights(tensors)
                save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
            if edit_config is not None:
                (source / "config.json").write_text(edit_config((source / "config.json").read_text()))
            keep(source)
            return ["--source", source, "--output_dir", fresh(source.parent / "out")]

        return argv

    vit_case("--source weights with a NaN", vit_edit(lambda t: t["classifier.weight"].__setitem__((0, 0), NAN)),
             ("NaN",))
    vit_case("--source missing a tensor", vit_edit(lambda t: t.pop("classifier.bias")), ("classifier.bias",))
    vit_case("--source with a corrupt config.json", vit_edit(edit_config=lambda text: "{oops"),
             (("--source", "config.json"),))

    def vit_dart_source():
        source = saved_image_folder()
        keep(source)
        return ["--source", source, "--output_dir", fresh(tmp("vit_dart") / "out")]

    vit_case("--source is a DART folder (not ViT/DeiT)", vit_dart_source, (("--source", "saved_image_model"),))

    def vit_empty_source():
        source = tmp("vit_empty")
        return ["--source", source, "--output_dir", fresh(source.parent / (source.name + "_out"))]

    vit_case("--source is an empty folder", vit_empty_source, (("--source", "vit_empty"),))

    def vit_overwrite_ok():
        source = vit_source()
        out_dir = source.parent / "out"
        out_dir.mkdir()
        (out_dir / "notes.txt").write_text("mine")
        keep(source, out_dir / "notes.txt")
        return ["--source", source, "--output_dir", out_dir, "--overwrite"]

    vit_case("--overwrite into a folder with an unrelated file (real conversion)", vit_overwrite_ok, (),
             expect="ok", check=lambda run: True)

    # ---------------------------------------------------------------- convert_videomamba_original.py
    from tests.test_video import _tiny_dart_folder, make_original_state_dict

    def video_checkpoint(path: Path, **changes) -> Path:
        state = make_original_state_dict()
        state.update(changes)
        torch.save({"model": state}, path)
        return path

    def vm(argv_fn):
        return lambda: call_main(cv.main, argv_fn())

    def vm_case(name, argv_fn, names, expect="error", check=None):
        probe("convert_videomamba", name, vm(argv_fn), names=names, expect=expect, check=check)

    def vm_with(*extra, uniform=True, changes=None):
        def argv():
            folder = tmp("vm")
            ckpt = video_checkpoint(folder / "c.pth", **(changes or {}))
            keep(ckpt)
            return ["--checkpoint", ckpt, "--output_dir", fresh(folder / "out"),
                    *(["--uniform_scorer"] if uniform else []), *extra]

        return argv

    for flag, value in (("--num_tokens", "0"), ("--num_tokens", "-3"), ("--num_tokens", "abc"),
                        ("--image_size", "0"), ("--image_size", "2.5")):
        vm_case(f"{flag} {value}", vm_with(flag, value), flag)
    vm_case("--num_tokens 10**6", vm_with("--num_tokens", str(10**6)), "num_tokens")
    vm_case("--revision (a flag it does not have)", vm_with("--revision", "v2"), "--revision")
    vm_case("--video_score_pooling max", vm_with("--video_score_pooling", "max"), "--video_score_pooling")
    vm_case("neither --scorer_from nor --uniform_scorer", vm_with(uniform=False),
            (("--scorer_from", "--uniform_scorer"),))

    nan_weight = make_original_state_dict()["norm_f.weight"].clone()
    nan_weight[0] = NAN
    vm_case("checkpoint with a NaN weight", vm_with(changes={"norm_f.weight": nan_weight}), ("norm_f.weight",))
    inf_weight = nan_weight.clone()
    inf_weight[0] = INF
    vm_case("checkpoint with an inf weight", vm_with(changes={"norm_f.weight": inf_weight}), ("norm_f.weight",))
    probe("convert_videomamba", "malicious pickle checkpoint", pickle_case(cv.main, ["--uniform_scorer"]),
          names=("evil.pth",))
    vm_case("missing --checkpoint", lambda: ["--checkpoint", TMP_ROOT / "none.pth", "--output_dir",
                                             fresh(tmp("vm_missing") / "out"), "--uniform_scorer"], ("none.pth",))
    vm_case("--model_key nope", vm_with("--model_key", "nope"), ("nope",))

    def vm_same_folder():
        folder = tmp("vm_same")
        ckpt = video_checkpoint(folder / "c.pth")
        (folder / "notes.txt").write_text("mine")
        keep(folder)
        return ["--checkpoint", ckpt, "--output_dir", folder, "--uniform_scorer", "--overwrite"]

    vm_case("output folder holds the checkpoint (--overwrite)", vm_same_folder, "--checkpoint")

    def vm_labels_in_output():
        folder = tmp("vm_labels")
        ckpt = video_checkpoint(folder / "c.pth")
        labels = folder / "labels" / "names.txt"
        labels.parent.mkdir()
        labels.write_text("\n".join("abcde") + "\n")
        keep(labels, ckpt)
        return ["--checkpoint", ckpt, "--output_dir", labels.parent, "--uniform_scorer", "--labels_file", labels,
                "--overwrite"]

    vm_case("output folder holds --labels_file (--overwrite)", vm_labels_in_output, "--labels_file")

    def vm_labels(text=None):
        def argv():
            folder = tmp("vm_lab")
            ckpt = video_checkpoint(folder / "c.pth")
            labels = folder / "names.txt"
            if text is not None:
                labels.write_text(text)
            return ["--checkpoint", ckpt, "--output_dir", fresh(folder / "out"), "--uniform_scorer", "--labels_file",
                    labels]

        return argv

    vm_case("--labels_file missing", vm_labels(None), (("--labels_file", "names.txt"),))
    vm_case("--labels_file with 3 labels for 5 classes", vm_labels("a\nb\nc\n"), (("labels", "names.txt"),))
    vm_case("--labels_file corrupt JSON", vm_labels("{oops"), (("labels", "names.txt"),))
    vm_case("--scorer_from missing folder", lambda: ["--checkpoint", video_checkpoint(tmp("vm_sf") / "c.pth"),
                                                    "--output_dir", fresh(TMP_ROOT / "vm_sf_out"), "--scorer_from",
                                                    TMP_ROOT / "no_scorer"], "--scorer_from")

    def vm_scorer_missing_tensor():
        from safetensors.torch import load_file, save_file

        folder, _ = _tiny_dart_folder(tmp("vm_sfm"))
        tensors = load_file(folder / "model.safetensors")
        del tensors["classifier.bias"]
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        keep(folder)
        return ["--checkpoint", video_checkpoint(folder.parent / "c.pth"), "--output_dir",
                fresh(folder.parent / "out"), "--scorer_from", folder]

    vm_case("--scorer_from folder missing a tensor", vm_scorer_missing_tensor, "--scorer_from")

    def vm_both():
        folder = tmp("vm_both")
        return ["--checkpoint", video_checkpoint(folder / "c.pth"), "--output_dir", fresh(folder / "out"),
                "--uniform_scorer", "--scorer_from", folder]

    vm_case("both --scorer_from and --uniform_scorer", vm_both, (("--scorer_from", "--uniform_scorer"),))

    def vm_output_file():
        folder = tmp("vm_file")
        target = folder / "taken"
        target.write_text("a file")
        keep(target)
        return ["--checkpoint", video_checkpoint(folder / "c.pth"), "--output_dir", target, "--uniform_scorer"]

    vm_case("--output_dir is an existing file", vm_output_file, "--output_dir")

    def vm_non_empty():
        folder = tmp("vm_ne")
        out_dir = folder / "out"
        out_dir.mkdir()
        (out_dir / "model.safetensors").write_bytes(b"previous")
        keep(out_dir)
        return ["--checkpoint", video_checkpoint(folder / "c.pth"), "--output_dir", out_dir, "--uniform_scorer"]

    vm_case("non-empty --output_dir without --overwrite", vm_non_empty, "--overwrite")
    if checkpoint is not None:
        vm_case("an image (DART) checkpoint given as a VideoMamba one",
                lambda: ["--checkpoint", checkpoint, "--output_dir", fresh(tmp("vm_img") / "out"), "--uniform_scorer"],
                (("--checkpoint", "darvit_tiny_depth2.pth", "patch_embed.proj.weight"),))

    def vm_ok():
        folder = tmp("vm_ok")
        ckpt = video_checkpoint(folder / "c.pth")
        keep(ckpt)
        return ["--checkpoint", ckpt, "--output_dir", folder / "out", "--uniform_scorer", "--num_tokens", "9",
                "--image_size", "40"]

    def vm_ok_check(run):
        folder = max(TMP_ROOT.glob("*_vm_ok"))
        config = json.loads((folder / "out" / "config.json").read_text())
        return (config.get("num_tokens") == 9 and config.get("image_size") == 40) or \
            f"config num_tokens={config.get('num_tokens')} image_size={config.get('image_size')}"

    vm_case("--num_tokens 9 --image_size 40 (real conversion)", vm_ok, (), expect="ok", check=vm_ok_check)


# ----------------------------------------------------------------------------------------------------- export_onnx
class ExportReached(Exception):
    pass


def register_export():
    from conversion import export_onnx

    def stub(model, path, batch_size=2):
        raise ExportReached("the exporter was called: the argument was not checked before the export")

    def run_export(argv_fn, real=False):
        def fn():
            original = export_onnx.export
            if not real:
                export_onnx.export = stub
            try:
                run = call_main(export_onnx.main, argv_fn())
            finally:
                export_onnx.export = original
            if isinstance(run.exc, ExportReached):
                return CliRun(0, run.out, run.err + "\n(reached the export: the argument was not checked before)")
            return run

        return fn

    def case(name, argv_fn, names, expect="error", check=None, real=False):
        probe("export_onnx", name, run_export(argv_fn, real), names=names, expect=expect, check=check)

    def with_args(*extra, folder_fn=saved_image_folder):
        def argv():
            folder = folder_fn()
            keep(folder)
            out = fresh(tmp("onnx") / "model.onnx")
            args = list(extra)
            if "--output" not in args:
                args += ["--output", out]
            return [folder, *args]

        return argv

    for flag, value in (("--atol", "nan"), ("--atol", "inf"), ("--atol", "-1"), ("--atol", "abc"),
                        ("--batch_size", "0"), ("--batch_size", "1"), ("--batch_size", "1025"),
                        ("--batch_size", "-1"), ("--batch_size", "1.5")):
        case(f"{flag} {value}", with_args(flag, value), flag)

    def output_arg(make):
        def argv():
            folder = saved_image_folder()
            keep(folder)
            target, extra = make(folder)
            return [folder, "--output", target, *extra]

        return argv

    case("--output in a missing folder", output_arg(lambda f: (tmp("o") / "missing" / "m.onnx", [])), "--output")
    case("--output is a folder", output_arg(lambda f: (tmp("o"), [])), "--output")
    case("--output with a .txt suffix", output_arg(lambda f: (tmp("o") / "m.txt", [])), "--output")
    case("--output = the model's weights file (--overwrite)",
         output_arg(lambda f: (f / "model.safetensors", ["--overwrite"])), "--output")

    def existing():
        folder = saved_image_folder()
        target = tmp("o") / "taken.onnx"
        target.write_bytes(b"keep")
        keep(folder, target)
        return [folder, "--output", target]

    case("--output exists, no --overwrite", existing, "--overwrite")
    case("missing model_dir", lambda: [TMP_ROOT / "no_model", "--output", fresh(tmp("o") / "m.onnx")], "no_model")

    def model_dir_file():
        folder = tmp("o")
        (folder / "file").write_text("x")
        return [folder / "file", "--output", fresh(folder / "m.onnx")]

    case("model_dir is a file", model_dir_file, "file")
    case("empty model_dir", lambda: [tmp("empty_model"), "--output", fresh(tmp("o") / "m.onnx")], "config.json")

    def vit_folder():
        from tests.test_vit_conversion import _save_vit

        folder = tmp("onnx_vit") / "vit"
        _save_vit(folder, image_size=32)
        return folder

    case("a ViT (non-DART) folder", with_args(folder_fn=vit_folder), "vit")
    case("corrupt config.json", with_args(folder_fn=lambda: edited_copy(lambda c: "{oops")), "config.json")

    def video_folder():
        from modeling_dart import DartVideoMambaForVideoClassification

        folder = tmp("onnx_video") / "model"
        DartVideoMambaForVideoClassification(tiny_config(backbone="videomamba", num_frames=2)).save_pretrained(folder)
        return folder

    # a video folder is exported like an image one (clips of the photo verify it): reaching the export is right
    case("a video model folder (valid)", with_args(folder_fn=video_folder), (), expect="ok",
         check=lambda run: "reached the export" in run.err or f"exit {run.code}: {run.err[-200:]}")
    case("folder missing a tensor", with_args(folder_fn=lambda: edited_copy(edit_weights=lambda w: w.pop(
        "classifier.bias"))), "classifier.bias")
    case("folder with a tensor of the wrong shape", with_args(folder_fn=lambda: edited_copy(
        edit_weights=lambda w: w.__setitem__("classifier.bias", torch.zeros(7)))), "classifier.bias")
    case("folder with an invalid config value", with_args(folder_fn=lambda: edited_copy(
        lambda c: {**c, "score_normalization": "global"})), "score_normalization")

    def one_channel():
        from modeling_dart import DartForImageClassification

        folder = tmp("onnx_gray") / "model"
        DartForImageClassification(tiny_config(num_channels=1, num_labels=3)).save_pretrained(folder)
        return folder

    case("1-channel model without a processor (verification)", with_args(folder_fn=one_channel), "--no_verify")

    def real_export():
        from modeling_dart import DartForImageClassification

        folder = tmp("onnx_real") / "model"
        torch.manual_seed(0)
        DartForImageClassification(tiny_config(scorer_trunk_depth=4, num_labels=3)).eval().save_pretrained(folder)
        (folder / "notes.txt").write_text("mine")
        keep(folder)
        return [folder, "--batch_size", "2"]

    def exported(run):
        folder = max(TMP_ROOT.glob("*_onnx_real")) / "model"
        names = sorted(p.name for p in folder.iterdir())
        if "model.onnx" not in names:
            return f"no model.onnx ({names})"
        if any("partial" in n for n in names):
            return f"partial file left: {names}"
        return True if "verified" in run.out else "not verified: " + run.out[-200:]

    case("real export of a tiny model (folder with an unrelated file)", real_export, (), expect="ok",
         check=exported, real=True)


# -------------------------------------------------------------------------------------------------------- training
TINY_MODEL = ("image_size=32,patch_size=8,score_grid_size=4,num_tokens=16,hidden_size=16,num_hidden_layers=1,"
              "num_attention_heads=2,scorer_trunk_depth=2,freeze_scorer_trunk=false")
RUN = ["--config_overrides", TINY_MODEL, "--crop_pct", "1.0", "--do_train", "true", "--do_eval", "true",
       "--max_steps", "1", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
       "--learning_rate", "1e-3", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
       "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--seed", "0"]


def write_images(folder: Path, classes=("cat", "dog"), per_class=3, size=40, seed=0) -> Path:
    generator = np.random.default_rng(seed)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(generator.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                folder / name / f"{name}_{i}.jpg")
    return folder


def image_data() -> Path:
    def build():
        root = TMP_ROOT / "image_data"
        write_images(root / "train")
        write_images(root / "validation", per_class=2, seed=1)
        return root

    return cached("image_data", build)


def runner():
    def build():
        os.environ["HF_HOME"] = str(TMP_ROOT / "hf_home")
        sys.path.insert(0, str(REPO_ROOT / "examples"))
        module = importlib.import_module("run_image_classification")
        with contextlib.suppress(Exception):
            import huggingface_hub.constants

            huggingface_hub.constants.HF_HUB_OFFLINE = True
        return module

    return cached("runner", build)


def register_training():
    def train(argv_fn, use_run=True):
        def fn():
            argv = argv_fn()
            return call_main(runner().cli, [*argv, *(RUN if use_run else [])])

        return fn

    def case(name, argv_fn, names, expect="error", check=None, use_run=True):
        probe("training", name, train(argv_fn, use_run), names=names, expect=expect, check=check)

    def data(*extra, out=None):
        def argv():
            root = image_data()
            keep(root)
            output = out() if out else fresh(tmp("train") / "out")
            return ["--train_dir", root / "train", "--validation_dir", root / "validation", "--output_dir", output,
                    *extra]

        return argv

    def bad_folder(kind):
        def argv():
            root = tmp("train_" + kind)
            train_dir, validation = root / "train", root / "validation"
            args = ["--train_dir", train_dir]
            if kind == "empty":
                train_dir.mkdir()
            elif kind == "text_only":
                (train_dir / "cat").mkdir(parents=True)
                (train_dir / "cat" / "readme.txt").write_text("no images")
            elif kind == "one_class":
                write_images(train_dir, classes=("cat",))
            elif kind == "flat":
                write_images(root, classes=("train",))
            elif kind == "other_validation_classes":
                write_images(train_dir)
                write_images(validation, classes=("cat", "horse"))
                args += ["--validation_dir", validation]
            elif kind == "missing":
                pass
            return [*args, "--output_dir", fresh(root / "out")]

        return argv

    for kind, flag in (("empty", "--train_dir"), ("text_only", "--train_dir"), ("one_class", "--train_dir"),
                       ("flat", "--train_dir"), ("other_validation_classes", "--validation_dir"),
                       ("missing", "--train_dir")):
        case(f"--train_dir {kind}", bad_folder(kind), flag)
    for value in ("1.5", "0", "nan", "-0.1"):
        case(f"--train_val_split {value}", data(f"--train_val_split={value}"), "--train_val_split")
    case("--model_name_or_path /nope/dart", data("--model_name_or_path", "/nope/dart"), "--model_name_or_path")
    case("--model_name_or_path nobody-here/no-such-model (offline)",
         data("--model_name_or_path", "nobody-here/no-such-dart-model"), "--model_name_or_path")
    case("--max_train_samples 0", data("--max_train_samples", "0"), "--max_train_samples")
    case("--resume_from_checkpoint missing", data("--resume_from_checkpoint", str(TMP_ROOT / "no_ckpt")),
         "--resume_from_checkpoint")
    case("no dataset at all", lambda: ["--output_dir", fresh(tmp("train") / "out")], ("--dataset_name", "--train_dir"))
    for spec, names in (("num_token=8", "num_token"), ("hidden_size=abc", "hidden_size"),
                        ("freeze_scorer_trunk=maybe", "freeze_scorer_trunk"), ("garbage", "--config_overrides"),
                        ("score_grid_size=0", "score_grid_size")):
        case(f"--config_overrides {spec}", data("--config_overrides", spec), names, use_run=False)
    for flag, value in (("--min_crop_scale", "0"), ("--mixup", "-1"), ("--rand_augment", "bogus-m9"),
                        ("--model_ema_decay", "1.5"), ("--layer_decay", "0"), ("--learning_rate", "abc"),
                        ("--hflip_probability", "1.5"), ("--random_erasing", "2")):
        case(f"{flag} {value}", data(f"{flag}={value}"), flag.lstrip("-"))
    case("--preset nope", data("--preset", "nope"), "--preset")

    def non_empty_out():
        folder = tmp("train_ne") / "run"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"the previous model")
        keep(folder)
        return folder

    case("non-empty --output_dir without --overwrite_output_dir", data(out=non_empty_out), "--overwrite_output_dir")

    def into_train_dir():
        root = tmp("train_self")
        write_images(root / "train")
        write_images(root / "validation", per_class=2, seed=1)
        keep(root)
        return ["--train_dir", root / "train", "--validation_dir", root / "validation", "--output_dir", root,
                "--overwrite_output_dir", "true"]

    case("--output_dir contains --train_dir (--overwrite_output_dir)", into_train_dir, "--train_dir")

    def into_model():
        model = tmp("train_model") / "model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        keep(model)
        root = image_data()
        return ["--train_dir", root / "train", "--model_name_or_path", model, "--output_dir", model,
                "--overwrite_output_dir", "true"]

    case("--output_dir = --model_name_or_path (--overwrite_output_dir)", into_model, "--model_name_or_path")

    # two real runs (max_steps 1, tiny model)
    def corrupt():
        root = tmp("train_corrupt")
        write_images(root / "train")
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
        keep(root / "train")
        return ["--train_dir", root / "train", "--train_val_split", "0.4", "--output_dir", fresh(root / "runs" / "out")]

    case("corrupt JPEG in --train_dir (run)", corrupt, ("--train_dir", "broken.jpg"))

    def overwrite_run():
        root = image_data()
        out = tmp("train_ok") / "run"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        (out / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.99, "old_metric": 1.0}))
        keep(root, out / "notes.txt")
        return ["--train_dir", root / "train", "--validation_dir", root / "validation", "--output_dir", out,
                "--overwrite_output_dir", "true"]

    def trained(run):
        out = max(TMP_ROOT.glob("*_train_ok")) / "run"
        results = json.loads((out / "all_results.json").read_text())
        if "old_metric" in results:
            return "all_results.json still holds the previous run's metrics"
        if not (out / "model.safetensors").is_file():
            return "no model.safetensors"
        leftovers = [p.name for p in out.parent.iterdir() if p.name != "run"]
        return True if not leftovers else f"temporary folders left: {leftovers}"

    case("--overwrite_output_dir into a folder with an unrelated file (run)", overwrite_run, (), expect="ok",
         check=trained)


# ============================================================================================================ main
COMPONENTS = {
    "config": register_config,
    "forward": register_forward,
    "labels": register_labels,
    "processor": register_processor,
    "video": register_video,
    "reshaper": register_reshaper,
    "loading": register_loading,
    "converters": register_converters,
    "reshaper_converters": register_reshaper_converters,
    "export_onnx": register_export,
    "training": register_training,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="save the per-probe results to this JSON file")
    parser.add_argument("--only", help=f"comma-separated components to run, of {', '.join(COMPONENTS)}")
    parser.add_argument("--quiet", action="store_true", help="print only the tables and the problems")
    args = parser.parse_args(argv)
    chosen = list(COMPONENTS) if not args.only else [c.strip() for c in args.only.split(",")]
    unknown = [c for c in chosen if c not in COMPONENTS]
    if unknown:
        parser.error(f"--only: unknown components {unknown}; choose from {list(COMPONENTS)}")

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()  # Transformers' warnings are collected per probe (and judged), not printed
    start = time.perf_counter()
    results: list[Result] = []
    try:
        for component in chosen:
            before = len(PROBES)
            try:
                COMPONENTS[component]()
            except Exception as error:  # noqa: BLE001
                print(f"!! could not set up the {component} probes: {type(error).__name__}: {error}", file=sys.stderr)
                traceback.print_exc()
                continue
            for p in PROBES[before:]:
                result = run_probe(p)
                results.append(result)
                if not args.quiet:
                    print(f"[{result.category:>7}] {result.component:<18} {result.name}  ({result.seconds:.2f}s)",
                          flush=True)
    finally:
        shutil.rmtree(TMP_ROOT, ignore_errors=True)
    elapsed = time.perf_counter() - start
    report(results, elapsed)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "elapsed_s": round(elapsed, 1),
            "totals": dict(Counter(r.category for r in results)),
            "results": [r.__dict__ for r in results],
        }, indent=1))
        print(f"\nper-probe results: {args.json}")
    return 0


def report(results: list[Result], elapsed: float) -> None:
    per = defaultdict(Counter)
    for r in results:
        per[r.component][r.category] += 1
    width = max([len(c) for c in per] + [9])
    header = f"{'component':<{width}} " + " ".join(f"{c:>8}" for c in CATEGORIES) + f" {'total':>6}"
    print("\n" + header + "\n" + "-" * len(header))
    for component, counts in per.items():
        print(f"{component:<{width}} " + " ".join(f"{counts[c]:>8}" for c in CATEGORIES)
              + f" {sum(counts.values()):>6}")
    totals = Counter(r.category for r in results)
    print("-" * len(header))
    print(f"{'TOTAL':<{width}} " + " ".join(f"{totals[c]:>8}" for c in CATEGORIES) + f" {len(results):>6}")
    print(f"({len(results)} probes in {elapsed:.0f} s)")
    problems = [r for r in results if r.category in ("unclear", "silent", "lost")]
    if problems:
        print("\nunclear / silent / lost:")
        for r in problems:
            print(f"  [{r.category}] {r.component}: {r.name}\n      {r.detail}")
    refused = [r for r in results if r.expect == "ok" and r.category == "clear"]
    if refused:
        print("\nvalid edge inputs refused (clearly):")
        for r in refused:
            print(f"  {r.component}: {r.name}\n      {r.detail}")
    leftovers = [r for r in results if r.leftover]
    if leftovers:
        print("\nfailed runs that left an output behind:")
        for r in leftovers:
            print(f"  {r.component}: {r.name}: {', '.join(Path(p).name for p in r.leftover)}")


if __name__ == "__main__":
    sys.exit(main())
