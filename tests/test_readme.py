"""The documentation's commands and links stay true to the code.

Every `python SCRIPT ...`, `python -m MODULE ...` and `accelerate launch ... SCRIPT ...` line of a fenced shell block
in the README files, and every `python ...` command quoted inline, goes through the parsers that would read it:
accelerate's own launch parser for the launcher's options, then the script's `main`, stopped the moment its
`argparse` / `HfArgumentParser` parser returns. A renamed or removed flag, a bad choice or a failed argument check
(the dataclasses' `__post_init__`) fails here, and no job starts. Placeholders (`DIR`, `MODEL_DIR`, `path/to/...`,
dataset folders outside the repository, output folders) become temporary paths first.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import shlex
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "examples/README.md", "benchmarks/README.md")
LINKED_DOCUMENTS = DOCUMENTS + ("docs/design.md", "docs/notes.md")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
# modules that the set-up commands run with `python -m`: tools, not scripts of this repository
TOOL_MODULES = {"venv", "pip", "pytest"}
PLACEHOLDER = re.compile(r"^(DIR|MODEL_DIR|path/to/.*)$")
INPUT_FOLDER_OPTIONS = {"--train_dir", "--validation_dir"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_PYTHON = re.compile(r"`(python3? [^`]+)`")


class ArgumentsParsed(BaseException):
    """Raised as soon as a script's parser returns, so that the job never starts (a BaseException: scripts that
    catch `Exception` to report errors let it through)."""


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    return [(match.group(1).lower(), match.group(2)) for match in FENCE.finditer(text)]


def shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split at `&&`, `||`, `;`
    and `|`, leading `NAME=value` assignments removed."""
    commands = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        current: list[str] = []
        for word in shlex.split(line, comments=True) + ["&&"]:
            if word in ("&&", "||", ";", "|"):
                while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


def is_python(word: str) -> bool:
    return word in ("python", "python3")


def documented_commands() -> list[tuple[str, list[str]]]:
    """Commands of fenced shell blocks, and whole `python ...` commands quoted inline in the text."""
    found = []
    for document in DOCUMENTS:
        text = (REPO_ROOT / document).read_text()
        for language, block in fenced_blocks(text):
            if language not in SHELL_LANGUAGES:
                continue
            for command in shell_commands(block):
                if is_python(command[0]) or command[:2] == ["accelerate", "launch"]:
                    found.append((document, command))
        for inline in INLINE_PYTHON.findall(FENCE.sub("", text)):
            found.append((document, shlex.split(inline)))
    return found


COMMANDS = documented_commands()
SCRIPT_COMMANDS = [(doc, cmd) for doc, cmd in COMMANDS if not (cmd[1:2] == ["-m"] and cmd[2] in TOOL_MODULES)]


def substitute_placeholders(args: list[str], tmp_path: Path) -> list[str]:
    """Placeholders and output folders become fresh temporary paths; an input dataset folder outside the repository
    (`data/train`, `imagenet/val`) becomes an empty temporary folder. Paths inside the repository stay as written,
    so a documented path that does not exist still fails."""
    substituted = []
    for i, word in enumerate(args):
        option = args[i - 1] if i else ""
        if PLACEHOLDER.match(word) or option == "--output_dir":
            word = str(tmp_path / f"placeholder_{i}")
        elif option in INPUT_FOLDER_OPTIONS and not (REPO_ROOT / Path(word).parts[0]).exists():
            folder = tmp_path / "datasets" / word
            folder.mkdir(parents=True, exist_ok=True)
            word = str(folder)
        substituted.append(word)
    return substituted


def load_target(command: list[str], monkeypatch) -> tuple[object, list[str]]:
    """The module a `python ...` command runs, imported as Python would run it, and the arguments it gets."""
    if command[1] == "-m":
        return importlib.import_module(command[2]), command[3:]
    script = (REPO_ROOT / command[1]).resolve()
    assert script.is_file(), f"{command[1]} does not exist"
    monkeypatch.syspath_prepend(str(script.parent))  # a script's folder comes first on sys.path
    return importlib.import_module(script.stem), command[2:]


def run_until_parsed(module, args: list[str], monkeypatch, capsys):
    """Call the module's `main` with `args`; return what its parser produced, without running the job."""
    from transformers import HfArgumentParser

    def stop_after(original):
        def parse(self, *a, **kw):
            raise ArgumentsParsed(original(self, *a, **kw))

        return parse

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after(argparse.ArgumentParser.parse_args))
    monkeypatch.setattr(HfArgumentParser, "parse_args_into_dataclasses",
                        stop_after(HfArgumentParser.parse_args_into_dataclasses))
    if hasattr(module, "make_demo_dataset"):  # `--make_demo_data DIR` writes clips before any parser runs

        def demo_data(folder):
            raise ArgumentsParsed(folder)

        monkeypatch.setattr(module, "make_demo_dataset", demo_data)
    main = module.main
    takes_argv = bool(inspect.signature(main).parameters)
    if not takes_argv:
        monkeypatch.setattr(sys, "argv", [module.__name__, *args])
    try:
        main(args) if takes_argv else main()
    except ArgumentsParsed as parsed:
        return parsed.args[0]
    except SystemExit as error:
        message = capsys.readouterr().err.strip().splitlines()[-1:] or [""]
        pytest.fail(f"the arguments do not parse (exit {error.code}): {message[0]}", pytrace=False)
    pytest.fail(f"{module.__name__}.main returned without going through an argument parser")


def command_id(entry) -> str:
    document, command = entry
    words = [w for w in command if not w.startswith("-")][:4]
    return f"{document}:{' '.join(words)}"[:90]


@pytest.mark.parametrize("entry", SCRIPT_COMMANDS, ids=[command_id(e) for e in SCRIPT_COMMANDS])
def test_documented_command_parses(entry, tmp_path, monkeypatch, capsys):
    _, command = entry
    monkeypatch.chdir(REPO_ROOT)  # the documents' commands run from the repository root
    command = substitute_placeholders(command, tmp_path)
    if command[0] == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        try:
            launch = launch_command_parser().parse_args(command[2:])
        except SystemExit as error:
            message = capsys.readouterr().err.strip().splitlines()[-1:] or [""]
            pytest.fail(f"accelerate does not take these options (exit {error.code}): {message[0]}", pytrace=False)
        command = ["python", launch.training_script, *launch.training_script_args]
    assert is_python(command[0]), command
    module, args = load_target(command, monkeypatch)
    parsed = run_until_parsed(module, args, monkeypatch, capsys)
    assert parsed is not None


def test_commands_are_found():
    """The extraction finds the commands (a broken fence pattern would otherwise leave nothing to check)."""
    scripts = {(cmd[2] if cmd[1] == "-m" else cmd[1]) for _, cmd in COMMANDS if is_python(cmd[0])}
    launched = [cmd for _, cmd in COMMANDS if cmd[0] == "accelerate"]
    assert {"examples/quickstart.py", "examples/run_image_classification.py", "conversion/convert_dart_original.py",
            "conversion/convert_vit_to_dart.py", "conversion/export_onnx.py", "pytest"} <= scripts
    assert launched, "no `accelerate launch` command found"
    assert len(SCRIPT_COMMANDS) >= 15


def test_shell_command_splitting():
    block = "A=1 python x.py --a 1 \\\n    --b 'two words' # comment\npython3 -m venv .venv && . .venv/bin/activate\n"
    assert shell_commands(block) == [["python", "x.py", "--a", "1", "--b", "two words"],
                                     ["python3", "-m", "venv", ".venv"], [".", ".venv/bin/activate"]]


def test_readme_test_command_is_the_ci_command():
    """`.ci/run` runs the README's test command byte for byte; the README shows it on one line of a shell block."""
    ci_line = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_line.startswith("python3 -m venv .venv && ") and ci_line.endswith("python -m pytest -q")
    blocks = [block for language, block in fenced_blocks((REPO_ROOT / "README.md").read_text())
              if language in SHELL_LANGUAGES]
    assert any(ci_line in block.splitlines() for block in blocks)


def test_python_blocks_are_valid_python():
    for document in DOCUMENTS:
        for language, block in fenced_blocks((REPO_ROOT / document).read_text()):
            if language == "python":
                ast.parse(block, filename=document)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation other than `-` and `_` removed, spaces to `-`."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+)$", text, re.MULTILINE)}


def test_relative_links_resolve():
    """Facts live in one document and the others link to them: every relative link names an existing file, and an
    existing heading where it gives an anchor."""
    broken = []
    for document in LINKED_DOCUMENTS:
        path = REPO_ROOT / document
        if not path.is_file():
            continue
        text = FENCE.sub("", path.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{document}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{document}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_github_anchor():
    assert github_anchor("DART vs a uniform grid, on sparse objects") == "dart-vs-a-uniform-grid-on-sparse-objects"
    assert github_anchor("`torch.compile`") == "torchcompile"


def markdown_section(text: str, anchor: str) -> str:
    """The text under the heading whose anchor is `anchor`, up to the next heading of the same or a higher level."""
    blanked = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # same offsets, no code lines
    headings = list(re.finditer(r"^(#{1,6}) +(.+)$", blanked, re.MULTILINE))
    for i, heading in enumerate(headings):
        if github_anchor(heading.group(2)) == anchor:
            level = len(heading.group(1))
            end = next((h.start() for h in headings[i + 1:] if len(h.group(1)) <= level), len(text))
            return text[heading.end():end]
    raise AssertionError(f"no heading with anchor #{anchor}")


def test_readme_results_come_from_the_benchmark_record():
    """The README's results table repeats only figures that the benchmark record holds, in the section that the row
    links to (where the command, date and machine are)."""
    readme = (REPO_ROOT / "README.md").read_text()
    record = (REPO_ROOT / "benchmarks" / "README.md").read_text()
    table = markdown_section(readme, "results")
    rows = [line for line in table.splitlines() if line.startswith("|") and "](benchmarks/README.md#" in line]
    assert len(rows) >= 5, "the README's results table links its rows to benchmarks/README.md"
    missing = []
    for row in rows:
        figure = [cell.strip() for cell in row.strip().strip("|").split("|")][1]
        section = markdown_section(record, re.search(r"\(benchmarks/README\.md#([^)]+)\)", row).group(1))
        for number in re.findall(r"\d+(?:\.\d+)?(?:e-\d+)?", figure):
            if not re.search(rf"(?<![\d.]){re.escape(number)}(?![\d]|\.\d|e-)", section):
                missing.append(f"{number} ({figure})")
    assert not missing, "figures of the README's results table missing from their benchmark section: " + ", ".join(
        missing)


def test_readme_has_no_dates_or_first_person():
    """Dates, "today" and "I" belong to the benchmark record and the notes, not to the README."""
    text = (REPO_ROOT / "README.md").read_text()
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text)
    assert not re.findall(r"\b[Tt]oday\b|\bI\b", text)
