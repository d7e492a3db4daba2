"""Every ```python block of README.md runs as written, each in a fresh interpreter in an empty folder.

The blocks read the environment variable SELF_REWARDING_README_SMALL: set to 1 (as this test does) they shrink
their sizes (pairs, examples, steps) so the suite stays quick; without it they run at the sizes the README
shows, which `python -m pytest -m slow tests/integration/test_readme.py` checks. A block that cannot run here (it needs a
GPU or a checkpoint on disk) is preceded by `<!-- readme-test: skip (the reason) -->` and reported as skipped
with that reason.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from helpers import run_watched

ROOT = Path(__file__).resolve().parents[2]
SMALL_ENV = "SELF_REWARDING_README_SMALL"
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


def block_id(block: dict) -> str:
    return f"line{block['line']}-" + re.sub(r"[^a-z0-9]+", "-", block["section"].lower()).strip("-")


def run_block(block: dict, folder: Path, small: bool):
    if block["skip"]:
        pytest.skip(f"README line {block['line']}: {block['skip']}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop(SMALL_ENV, None)
    if small:
        env[SMALL_ENV] = "1"
    done = run_watched([sys.executable, "-c", block["code"]], cwd=folder, env=env)
    assert done.returncode == 0, (
        f"README block at line {block['line']} ({block['section']}) failed:\n{done.stderr[-4000:]}"
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(b) for b in BLOCKS])
def test_readme_block_runs_as_written(block, tmp_path):
    """About 1-20 s idle each."""
    run_block(block, tmp_path, small=True)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(b) for b in BLOCKS])
def test_readme_block_runs_at_full_size(block, tmp_path):
    run_block(block, tmp_path, small=False)


def test_blocks_are_found_with_their_sections_and_skip_reasons():
    """Under 1 s idle."""
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
    would be caught here. Under 1 s idle."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart-output -->(.*?)<!-- /quickstart-output -->", readme, re.S)[1]
    reading = readme.split("<!-- /quickstart-output -->")[1].split("\n## ")[0]
    figures = re.findall(r"\d+\.\d+%?", reading)
    assert len(figures) >= 3
    assert [f for f in figures if f not in block] == []


def test_the_cpu_torch_tip_comes_before_the_commands_a_newcomer_copies():
    """Under 1 s idle."""
    readme = (ROOT / "README.md").read_text()
    assert readme.index("pip install torch==") < readme.index("pip install -e .")


def test_the_slow_marker_the_readme_mentions_collects_the_long_runs():
    """`python -m pytest -m slow` once collected no test while the README said it runs the long learning runs.
    About 8 s idle."""
    readme = (ROOT / "README.md").read_text()
    assert "python -m pytest -q -m slow" in readme
    done = run_watched([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow", "-p", "no:cacheprovider",
                        __file__], cwd=ROOT)
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    assert any("test_readme_block_runs_at_full_size" in line for line in collected), done.stdout[-2000:]
    assert all("test_readme_block_runs_as_written" not in line for line in collected)  # the quick runs stay default
