"""The documentation holds together: every option a command's --help lists is on that command's
page, and every relative link and anchor in README.md and docs/ leads somewhere. The references are
the Typer app itself (its click commands) and the files on disk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from crosslmm_cli.app import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
COMMAND_PAGES = {
    "ask": "asking.md", "serve": "serving.md", "eval": "evaluation.md", "finetune": "training.md",
    "bench": "performance.md", "init": "models.md", "models": "models.md", "distill": "distillation.md",
    "run-batch": "serving.md",
}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def commands() -> dict:
    return dict(typer.main.get_command(app).commands)


def options(command) -> list[list[str]]:
    """Each option's names (``--v2v`` and ``--no-v2v`` are one option), --help left out. (typer 0.29
    carries its own copy of click, so the kind is read by name, not by class.)"""
    return [param.opts + param.secondary_opts for param in command.params
            if param.param_type_name == "option" and "--help" not in param.opts]


def test_every_command_has_a_page():
    assert set(commands()) == set(COMMAND_PAGES), "map each command to the page that documents it"


@pytest.mark.parametrize("name", sorted(COMMAND_PAGES))
def test_every_option_of_a_command_is_on_its_page(name):
    text = (ROOT / "docs" / COMMAND_PAGES[name]).read_text()
    assert options(commands()[name]) or name == "models", "no options found: the test would pass on anything"
    missing = [names[0] for names in options(commands()[name])
               if not any(re.search(re.escape(option) + r"(?![\w-])", text) for option in names)]
    assert not missing, f"docs/{COMMAND_PAGES[name]} does not mention {', '.join(missing)} of `crosslmm {name}`"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_slugs_are_githubs():
    assert slug("Architecture (package `models/`, imported as `crosslmm`)") == \
        "architecture-package-models-imported-as-crosslmm"
    assert slug("Does the cross-attention learn? (a miniature of the paper's Table 2a)") == \
        "does-the-cross-attention-learn-a-miniature-of-the-papers-table-2a"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and (destination.suffix != ".md" or anchor not in anchors(destination)):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: {'; '.join(broken)}"


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 200
