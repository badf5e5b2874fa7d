"""Helpers shared by the converters (`conversion/*.py`), the training scripts (`examples/run_*_classification.py`)
and `from_backbone` (wrapping pretrained ViT / DeiT / Vim backbones):

- checkpoints: safe loading (one loader for every original format), key renaming by rules, the key accounting that
  refuses to drop or leave out any tensor, and the checks that refuse non-finite or incomplete weights;
- output folders: the checks a run makes before it writes (`check_output_dir`) and `StagedOutput`, which writes into
  a temporary sibling folder and moves it into place only when the run succeeds;
- command lines: `UsageError` for bad arguments and data, printed on one line with exit code 2.

They live in the package (not in `conversion/`) so that `DartForImageClassification.from_pretrained_backbone` works
from an installed `modeling_dart`; the scripts import them from here.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


class ConversionError(Exception):
    """A checkpoint that cannot be converted faithfully."""


class UsageError(ValueError):
    """A command-line argument, or the data it points to, that a script cannot use. Its message names the argument;
    the scripts print it on one line and exit with code 2."""


def one_line(error: BaseException) -> str:
    """The message of `error` on one line. A DataLoader worker re-raises an error with the worker's traceback in its
    message: then the last line of that traceback, which holds the original message, without the class name."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if any(line.startswith(("Traceback (most recent call last)", "Original Traceback")) for line in lines):
        return re.sub(r"^[\w.]*" + re.escape(type(error).__name__) + r": ", "", lines[-1])
    return " ".join(lines)


def report_usage_error(error: BaseException) -> int:
    """Print `error: <message>` on one line to stderr and return the exit code of bad input, 2."""
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 2


def positive_int(text: str) -> int:
    """An `argparse` type: an integer >= 1 (argparse names the flag in its error message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def compile_rules(rules: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    """`(pattern, replacement)` pairs -> compiled patterns anchored at the start of the key."""
    return [(re.compile("^" + pattern), replacement) for pattern, replacement in rules]


def rename_key(key: str, compiled_rules: list[tuple[re.Pattern, str]]) -> str | None:
    """The new name of `key` under the first matching rule, or None when no rule matches."""
    for pattern, replacement in compiled_rules:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


# Vision Mamba backbone keys of the original releases (hustvl/Vim and the darvim_* models of DART, which add the
# scorer under `patch_embed.spn.*`) -> DartForImageClassification names. The ViT blocks of the original DeiT/darvit
# format have their own rules in `conversion/convert_dart_original.py`.
VIM_KEY_RULES: list[tuple[str, str]] = [
    (r"patch_embed\.proj\.(weight|bias)$", r"dart.embeddings.projection.\1"),
    (r"cls_token$", r"dart.embeddings.cls_token"),
    (r"pos_embed$", r"dart.embeddings.position_embeddings"),
    (r"layers\.(\d+)\.mixer\.(.+)$", r"dart.encoder.layers.\1.mixer.\2"),
    (r"layers\.(\d+)\.norm\.weight$", r"dart.encoder.layers.\1.norm.weight"),
    (r"norm_f\.weight$", r"dart.encoder.norm_f.weight"),
    (r"head\.(weight|bias)$", r"classifier.\1"),
]


def safe_torch_load(path: str | Path) -> dict:
    """`torch.load(weights_only=True)` allowing only `argparse.Namespace` (the `args` of training checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, refused globals, truncated files
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint with weights_only=True: {error}") from error
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, expected a dict (state dict or wrapper).")
    return checkpoint


def load_original_checkpoint(path: str | Path, weights: str = "model", *, strip_prefixes: Iterable[str] = (),
                             return_wrapper: bool = False):
    """Read an original `.pth` (DeiT / DART / Vim / VideoMamba training format) safely and return its state dict.

    Args:
        path: the checkpoint, read with `torch.load(weights_only=True)` (see `safe_torch_load`).
        weights: the wrapper entry holding the state dict, or several separated by `|`, tried in order (the first
            that holds a dict wins): `model`, `model_ema`, `model|module` (VideoMamba's `--model_key`). With `model`,
            DeepSpeed's `module` is tried after it. A bare state dict (every value a tensor) is taken when the
            entries include `model` or `module`; it holds no EMA or other entry, so asking for one is an error.
        strip_prefixes: prefixes removed from the keys after DDP's `module.` (VideoMamba: `backbone.`, `encoder.`);
            two keys that become one name are an error.
        return_wrapper: return `(state_dict, wrapper)` instead, where `wrapper` is the whole file (`{}` for a bare
            state dict), e.g. to read labels stored beside the weights.

    Raises:
        ConversionError: a missing or unreadable file, no such entry, non-tensor values, or colliding keys.
    """
    checkpoint = safe_torch_load(path)
    keys = [key for key in weights.split("|") if key]
    if not keys:
        raise ConversionError(f"no checkpoint entry given (weights={weights!r}).")
    if "model" in keys and "module" not in keys:
        keys.insert(keys.index("model") + 1, "module")
    state_dict, wrapper = None, checkpoint
    for key in keys:
        if isinstance(checkpoint.get(key), dict):
            state_dict = checkpoint[key]
            break
    if state_dict is None:
        is_bare = bool(checkpoint) and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
        if not (is_bare and {"model", "module"} & set(keys)):
            entries = ", ".join(sorted(map(str, checkpoint)))[:300]
            kind = "a bare state dict" if is_bare else f"entries: {entries}"
            raise ConversionError(f"{path} has no {weights!r} state dict ({kind}).")
        state_dict, wrapper = checkpoint, {}
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"non-tensor entries in the state dict: {bad[:5]}")
    prefixes = tuple(strip_prefixes)
    cleaned: dict[str, torch.Tensor] = {}
    for original_key, tensor in state_dict.items():
        key = str(original_key).removeprefix("module.")
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key in cleaned:
            raise ConversionError(f"two checkpoint keys map to {key!r} once the prefixes "
                                  f"{('module.', *prefixes)} are stripped; which one is meant is ambiguous.")
        cleaned[key] = tensor
    return (cleaned, wrapper) if return_wrapper else cleaned


def require_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise a `ConversionError` naming every tensor of `tensors` that holds NaN or infinite values."""
    problems = []
    for key, tensor in tensors.items():
        if not tensor.is_floating_point() and not tensor.is_complex():
            continue
        nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        if nan or inf:
            problems.append(f"{key} ({', '.join(f'{n} {kind}' for n, kind in ((nan, 'NaN'), (inf, 'inf')) if n)})")
    if problems:
        raise ConversionError(f"{what} holds non-finite values in {len(problems)} tensor(s): {', '.join(problems[:8])}.")


def _listed(items, limit: int = 5) -> str:
    items = sorted(str(item) for item in items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_complete_model(model_class, folder: str | Path, flag: str, **kwargs):
    """`model_class.from_pretrained(folder, **kwargs)`, refusing a folder whose weights lack, add or mis-shape a
    tensor: the converters and the ONNX exporter must not build on randomly initialised tensors.

    `from_pretrained` initialises a missing tensor at random and only reports it (and stops at a mis-shaped one with
    a multi-line report): here every problem is listed in one `ConversionError` that names `flag` (the command-line
    argument that gave `folder`). Transformers' own load report is silenced while loading.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = model_class.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True,
                                                  **kwargs)
    except (OSError, ValueError) as error:
        raise ConversionError(f"{flag} {folder}: cannot load it as a {model_class.__name__}: "
                              f"{one_line(error)}") from error
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing {_listed(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected {_listed(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        shapes = (f"{key} {tuple(saved)} vs {tuple(wanted)}" for key, saved, wanted in info["mismatched_keys"])
        problems.append(f"mismatched {_listed(shapes)}")
    if info.get("error_msgs"):
        problems.append(f"errors {_listed(info['error_msgs'])}")
    if problems:
        raise ConversionError(f"{flag} {folder}: its weights do not match its {model_class.__name__} "
                              f"({'; '.join(problems)}); refusing to build on randomly initialised tensors.")
    return model


def infer_depth(state_dict: dict[str, torch.Tensor], backbone: str, what: str | None = None) -> int:
    """Number of blocks (`blocks.N.*` for ViT, `layers.N.*` for the Mamba backbones); the indices must be 0..N-1."""
    prefix = r"^blocks\.(\d+)\." if backbone == "vit" else r"^layers\.(\d+)\."
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(prefix, k))}
    if not indices:
        what = what or f"a {backbone} checkpoint"
        raise ConversionError(f"no {'blocks' if backbone == 'vit' else 'layers'}.N.* keys: not {what}.")
    depth = max(indices) + 1
    if indices != set(range(depth)):
        raise ConversionError(f"block indices are not contiguous: {sorted(indices)}")
    return depth


def require_tensor(state_dict: dict[str, torch.Tensor], key: str, ndim: int, what: str) -> torch.Tensor:
    """`state_dict[key]`, which must exist and have `ndim` dimensions (else a `ConversionError` naming `what`)."""
    if key not in state_dict:
        raise ConversionError(f"missing key {key!r}: not {what}.")
    tensor = state_dict[key]
    if tensor.dim() != ndim:
        raise ConversionError(f"mis-shaped key {key!r}: expected {ndim} dimensions, got {tuple(tensor.shape)}.")
    return tensor


def infer_mamba_sizes(state_dict: dict[str, torch.Tensor], hidden_size: int, what: str) -> dict:
    """DartConfig keyword arguments of a bidirectional Mamba stack read from its `layers.N.mixer.*` tensors: depth,
    state size, expansion, time-step rank, convolution width and the two bias flags."""
    depth = infer_depth(state_dict, "vim", what)
    a_log = require_tensor(state_dict, "layers.0.mixer.A_log", 2, what)
    dt_proj = require_tensor(state_dict, "layers.0.mixer.dt_proj.weight", 2, what)
    conv = require_tensor(state_dict, "layers.0.mixer.conv1d.weight", 3, what)
    inner, state_size = a_log.shape
    if inner % hidden_size:
        raise ConversionError(f"mixer width {inner} is not a multiple of the model width {hidden_size}.")
    return dict(
        num_hidden_layers=depth,
        state_size=state_size,
        expand=inner // hidden_size,
        time_step_rank=dt_proj.shape[1],
        conv_kernel=conv.shape[-1],
        use_conv_bias="layers.0.mixer.conv1d.bias" in state_dict,
        use_bias="layers.0.mixer.in_proj.bias" in state_dict,
    )


def account_keys(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rename: Callable,
                 what: str, adapt: Callable | None = None) -> dict[str, torch.Tensor]:
    """Map every original key onto `expected` (converted name -> tensor of the target model) with `rename` (original
    name -> converted name or None); `adapt(key, tensor)` may reshape a tensor first. Raise a `ConversionError` naming
    `what` on unmatched, missing, mis-shaped or doubly mapped keys: no key is dropped, none left uninitialised."""
    converted, unexpected, mismatched = {}, [], []
    for key, tensor in state_dict.items():
        new_key = rename(key)
        if new_key is None or new_key not in expected:
            unexpected.append(key)
            continue
        if new_key in converted:
            raise ConversionError(f"two original keys map to {new_key}")
        if adapt is not None:
            tensor = adapt(key, tensor)
        if tuple(tensor.shape) != tuple(expected[new_key].shape):
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[new_key].shape)}")
            continue
        converted[new_key] = tensor.to(expected[new_key].dtype).contiguous()
    missing = sorted(set(expected) - set(converted))
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:8]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:8]}")
    if mismatched:
        problems.append(f"{len(mismatched)} mis-shaped key(s): {mismatched[:8]}")
    if problems:
        raise ConversionError(f"the checkpoint does not match {what}: " + "; ".join(problems))
    return converted


# ---------------------------------------------------------------------------------------------- output folders
def _local_path(value) -> Path | None:
    """The resolved path of `value` when it names an existing local file or folder, else None (Hub ids, URLs)."""
    if value is None or "://" in str(value):
        return None
    path = Path(os.path.expanduser(str(value)))
    return path.resolve() if path.exists() else None


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(output_dir: str | Path, *, overwrite: bool, inputs: dict[str, object] | None = None,
                     output_flag: str = "--output_dir", overwrite_flag: str = "--overwrite") -> Path:
    """Check an output folder before a run writes anything, and return its resolved path.

    Raises a `UsageError` naming the flags when `output_dir` is an existing file; a non-empty folder and `overwrite`
    is off; or when it contains, or lies inside, any of `inputs` (flag -> value; values that are not existing local
    paths, such as Hub ids, are skipped), so that writing the output can never replace or delete an input.
    """
    output = Path(os.path.expanduser(str(output_dir))).resolve()
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output_flag} {output_dir} is an existing file; give the path of a folder.")
    for parent in output.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{output_flag} {output_dir}: {parent} is a file, so no folder can be made there.")
    for flag, value in (inputs or {}).items():
        path = _local_path(value)
        if path is None:
            continue
        if _is_within(path, output):
            raise UsageError(f"{output_flag} {output_dir} contains the input {flag} {value}; choose an output folder "
                             "apart from the inputs.")
        if _is_within(output, path):
            raise UsageError(f"{output_flag} {output_dir} lies inside the input {flag} {value}; choose an output "
                             "folder apart from the inputs.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UsageError(f"{output_flag} {output_dir} exists and is not empty; pass {overwrite_flag} to write into it "
                         "(the run replaces the files it writes and keeps the others).")
    return output


def check_model_source(flag: str, value: str | None) -> None:
    """A path-like `value` (absolute, `./`, `../`, `~`) must be an existing folder or file; a Hub id is resolved
    later, where a failure is reported under `flag` too."""
    if value is None or os.path.exists(os.path.expanduser(value)):
        return
    if value.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(value):
        raise UsageError(f"`{flag}` {value}: no such folder (and not a Hub id of the form `org/name`).")


def load_from_hub(flag: str, loader, name: str, **kwargs):
    """`loader(name, **kwargs)`, with a failure to find or read `name` reported as a `UsageError` naming `flag`."""
    try:
        return loader(name, **kwargs)
    except OSError as error:
        raise UsageError(f"`{flag}` {name}: {error}") from error


def _distributed():
    """`torch.distributed` when a process group of several processes is running, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class StagedOutput:
    """A context manager that has a run write into a temporary sibling of `target` and moves the result into place
    only when the run succeeds, so that a failed run leaves no half-written folder.

        with StagedOutput(output_dir) as folder:
            model.save_pretrained(folder)

    On success the temporary folder becomes `target` (renamed, when `target` is missing or empty), or its top-level
    entries replace the same-named ones of an existing `target` (entries the run did not write are kept and listed in
    `self.kept`). On failure the temporary folder and any parent folders made for it are removed, unless
    `keep_on_failure(folder)` is true (a training run that saved checkpoints): then it is moved into a missing or empty
    `target` (to resume from), or left where it is, with a log line, beside a non-empty one.

    Several processes (a `torch.distributed` launch): every process enters and leaves together; the first process
    names the folder and shares the name, the processes with `main_process=True` create and move it, between
    barriers, so no process writes while another moves the folder.

    `in_place=True` writes into `target` itself (a run that resumes from a checkpoint inside it).
    """

    def __init__(self, target: str | Path, *, main_process: bool = True, in_place: bool = False,
                 keep_on_failure: Callable[[Path], bool] | None = None):
        self.target = Path(os.path.expanduser(str(target))).resolve()
        self.main_process, self.in_place, self.keep_on_failure = main_process, in_place, keep_on_failure
        self.path: Path | None = None
        self.kept: list[str] = []
        self._made_parents: list[Path] = []

    def __enter__(self) -> Path:
        dist = _distributed()
        if self.in_place:
            if self.main_process:
                self.target.mkdir(parents=True, exist_ok=True)
            if dist is not None:
                dist.barrier()
            self.path = self.target
            return self.path
        name = None
        if dist is None or dist.get_rank() == 0:
            self._made_parents = [p for p in reversed(self.target.parents) if not p.exists()]
            self.target.parent.mkdir(parents=True, exist_ok=True)
            name = tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".partial", dir=self.target.parent)
        if dist is not None:
            shared = [name]
            dist.broadcast_object_list(shared, src=0)
            name = shared[0]
            if self.main_process:
                Path(name).mkdir(parents=True, exist_ok=True)
            dist.barrier()
        self.path = Path(name)
        return self.path

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if self.in_place:
            return False
        if exc_type is None:
            dist = _distributed()
            if dist is not None:
                dist.barrier()
            if self.main_process:
                self.kept = self._move_into_place()
                if self.kept:
                    logger.warning(f"{self.target}: kept {len(self.kept)} entries this run did not write: "
                                   f"{self.kept[:10]}")
            if dist is not None:
                dist.barrier()
            return False
        if self.main_process and self.path is not None and self.path.exists():
            if self.keep_on_failure is not None and self.keep_on_failure(self.path):
                if not self.target.exists() or (self.target.is_dir() and not any(self.target.iterdir())):
                    self._move_into_place()
                    logger.warning(f"The run failed; what it saved is in {self.target} (to resume from).")
                else:
                    logger.warning(f"The run failed; what it saved is in {self.path} ({self.target} is left as it "
                                   "was).")
            else:
                self.discard()
        return False

    def discard(self) -> None:
        """Remove the temporary folder and the parent folders made for it (when they are empty)."""
        if self.path is not None and self.path != self.target:
            shutil.rmtree(self.path, ignore_errors=True)
        for parent in reversed(self._made_parents):
            try:
                parent.rmdir()
            except OSError:
                break

    def _move_into_place(self) -> list[str]:
        staged, target = self.path, self.target
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if not target.exists():
            os.replace(staged, target)
            return []
        kept = sorted(entry.name for entry in target.iterdir() if not (staged / entry.name).exists())
        for entry in sorted(staged.iterdir()):
            destination = target / entry.name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            elif entry.is_dir() and (destination.exists() or destination.is_symlink()):
                destination.unlink()
            os.replace(entry, destination)  # a file over a file: atomic
        staged.rmdir()
        return kept


__all__ = ["ConversionError", "UsageError", "one_line", "report_usage_error", "positive_int", "compile_rules",
           "rename_key", "VIM_KEY_RULES", "safe_torch_load", "load_original_checkpoint", "require_finite",
           "load_complete_model", "infer_depth", "require_tensor", "infer_mamba_sizes", "account_keys",
           "check_output_dir", "check_model_source", "load_from_hub", "StagedOutput"]
