"""The commands the README and the manual (docs/) tell a person to run name things that exist.

Every ``make`` target is the Makefile's, every ``python -m`` module and ``python bench/`` script
is the project's and takes the flags and subcommands the docs give it, and a stage run by hand
is given every flag its ``main`` requires. (The README's example request is run against a real
service in ``tests/serving/test_service.py``; the manual's links are checked by
``mkdocs build --strict`` in ``make test-all``.)
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(page: Path) -> list[str]:
    """Shell commands of a page: lines of its ``bash`` blocks (continuations joined, comments
    dropped) and inline code spans that start like one."""
    text = page.read_text()
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [line.split("  #")[0].strip() for line in joined.splitlines()]
    out += re.findall(r"`((?:make|python3?|torchrun) [^`]+)`", text)
    return [c for c in out if c]


def runs(command: str) -> list[str] | None:
    """The words of the project command ``command`` runs (env assignments and a trailing ``&``
    dropped), or None when it runs something else (curl, docker, dvc, bentoml ...)."""
    try:
        words = shlex.split(command.replace("…", "").rstrip("&").strip())
    except ValueError:  # an unclosed quote: a multi-line snippet, not a project command
        return None
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        words = words[1:]
    if not words or words[0] not in ("make", "python", "python3", "torchrun"):
        return None
    return words


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", text, flags=re.M))


def module_source(module: str) -> str:
    """The module's source, with its package's ``__main__`` (``python -m package``)."""
    base = ROOT / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__main__.py"):
        if path.is_file():
            return path.read_text()
    raise AssertionError(f"no module {module!r} in the project")


ALL = [(page.relative_to(ROOT), c) for page in PAGES for c in commands(page) if runs(c)]


def test_the_pages_hold_commands() -> None:
    assert len(ALL) > 30  # the check is not vacuous
    assert {c.split()[0] for _, c in ALL} >= {"make", "python"}


@pytest.mark.parametrize(("page", "command"), ALL, ids=[f"{p}: {c[:50]}" for p, c in ALL])
def test_a_documented_command_names_what_exists(page: Path, command: str) -> None:
    words = runs(command)
    assert words is not None
    if words[0] == "make":
        unknown = [w for w in words[1:] if "=" not in w and w not in makefile_targets()]
        assert not unknown, f"{page}: make target(s) {unknown} not in the Makefile"
        return
    if "--" in words:  # what follows `--` is another command (compute.kernels' wrapper)
        words = words[: words.index("--")]
    flags = [w.split("=")[0] for w in words if w.startswith("--")]
    if "-m" in words:
        module = words[words.index("-m") + 1]
        source = module_source(module)
        rest = words[words.index("-m") + 2 :]
        if module.startswith("pipeline.") and hasattr(
            stage := importlib.import_module(module), "FLAGS"
        ):
            given = {w for w in rest if w.startswith("--")}
            if given:  # a stage run by hand: every flag its main requires
                missing = sorted(set(stage.FLAGS) - given)
                assert not missing, f"{page}: {module} needs {missing}"
                unknown = sorted(given - set(stage.FLAGS) - {"--params"})
                assert not unknown, f"{page}: {module} takes no {unknown}"
            return
        # its subcommand, if it names one first (a flag's value is not one)
        subcommand = rest[:1] if rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]) else []
        for word in [*flags, *subcommand]:
            assert f'"{word}"' in source or f"'{word}'" in source, (
                f"{page}: {module} has no {word!r}"
            )
        return
    script = next((w for w in words if w.endswith(".py")), None)
    assert script is not None, f"{page}: {command!r} runs no script"
    path = ROOT / script
    assert path.is_file(), f"{page}: {script} does not exist"
    for flag in flags:
        assert f'"{flag}"' in path.read_text(), f"{page}: {script} has no {flag}"
