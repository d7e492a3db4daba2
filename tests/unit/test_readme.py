"""Every ```python block of README.md runs as written, each in a fresh interpreter in an empty folder.

The blocks read the environment variable SELF_REWARDING_README_SMALL: set to 1 (as this test does) they shrink
their sizes (pairs, examples, steps) so the suite stays quick; without it they run at the sizes the README
shows, which `python -m pytest -m slow tests/integration/test_readme_runs.py` checks. A block that cannot run here (it needs a
GPU or a checkpoint on disk) is preceded by `<!-- readme-test: skip (the reason) -->` and reported as skipped
with that reason.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->")


def python_blocks(markdown: str) -> list[dict]:
    """The ```python blocks of `markdown`: their code, first line number, section and skip reason (or None)."""
    blocks, section, fence, previous = [], "top", None, ""
    lines = markdown.splitlines()
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                skip = SKIP_MARKER.fullmatch(previous)
                fence = dict(language=stripped[3:].strip(), line=number + 1, section=section, code=[],
                             skip=skip["reason"] if skip else None)
            elif stripped.startswith("#"):
                section = stripped.lstrip("#").strip()
            if stripped:
                previous = stripped
        elif stripped == "```":
            if fence["language"] == "python":
                blocks.append(dict(fence, code="\n".join(fence["code"]) + "\n"))
            fence, previous = None, ""
        else:
            fence["code"].append(line)
    return blocks


BLOCKS = python_blocks((ROOT / "README.md").read_text())


def test_blocks_are_found_with_their_sections_and_skip_reasons():
    markdown = "\n".join([
        "## A", "```bash", "# not a heading", "pip install x", "```",
        "```python", "print(1)", "```",
        "### B", "<!-- readme-test: skip (needs a GPU) -->", "", "```python", "import torch", "```",
    ])
    blocks = python_blocks(markdown)
    assert [(b["section"], b["code"], b["skip"]) for b in blocks] == [
        ("A", "print(1)\n", None), ("B", "import torch\n", "needs a GPU")]
    # the README itself: its blocks are all found, and few are skipped
    # (skipped: the HF block needs a checkpoint on disk, the vLLM block vllm and a checkpoint)
    assert len(BLOCKS) >= 5 and sum(b["skip"] is not None for b in BLOCKS) <= 2


def test_the_quickstart_reading_quotes_only_figures_of_its_block():
    """The paragraph that reads the quickstart output cites figures from it: regenerated figures with an old reading
    would be caught here."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart-output -->(.*?)<!-- /quickstart-output -->", readme, re.S)[1]
    reading = readme.split("<!-- /quickstart-output -->")[1].split("\n## ")[0]
    figures = re.findall(r"\d+\.\d+%?", reading)
    assert len(figures) >= 3
    assert [f for f in figures if f not in block] == []


def test_the_cpu_torch_tip_comes_before_the_commands_a_newcomer_copies():
    readme = (ROOT / "README.md").read_text()
    assert readme.index("pip install torch==") < readme.index("pip install -e .")
