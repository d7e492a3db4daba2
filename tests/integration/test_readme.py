"""Every ```python block of README.md and of the user's guide (docs/guide.md) runs as written, each in a fresh
interpreter in an empty folder.

The blocks read the environment variable SELF_REWARDING_README_SMALL: set to 1 (as this test does) they shrink
their sizes (pairs, examples, steps) so the suite stays quick; without it they run at the sizes the pages show,
which `python -m pytest -m slow tests/integration/test_readme.py` checks. A block that cannot run here (it needs a
GPU, or several processes) says so on its first line, where a reader sees it: `# needs: the reason`; it is reported
as skipped with that reason.
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
DOCS = ["README.md", "docs/guide.md"]
NEEDS = re.compile(r"#\s*needs:\s*(?P<reason>.+)")


def python_blocks(markdown: str) -> list[dict]:
    """The ```python blocks of `markdown`: their code, first line number, section and skip reason (the text after
    `# needs:` on the block's first line, or None)."""
    blocks, section, fence = [], "top", None
    for number, line in enumerate(markdown.splitlines(), start=1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence = dict(language=stripped[3:].strip(), line=number + 1, section=section, code=[])
            elif stripped.startswith("#"):
                section = stripped.lstrip("#").strip()
        elif stripped == "```":
            if fence["language"] == "python":
                needs = NEEDS.fullmatch(fence["code"][0].strip()) if fence["code"] else None
                blocks.append(dict(fence, code="\n".join(fence["code"]) + "\n", skip=needs["reason"] if needs else None))
            fence = None
        else:
            fence["code"].append(line)
    return blocks


BLOCKS = [dict(block, doc=doc) for doc in DOCS for block in python_blocks((ROOT / doc).read_text())]


def block_id(block: dict) -> str:
    return (f"{Path(block['doc']).stem.lower()}-line{block['line']}-"
            + re.sub(r"[^a-z0-9]+", "-", block["section"].lower()).strip("-"))


def run_block(block: dict, folder: Path, small: bool):
    if block["skip"]:
        pytest.skip(f"{block['doc']} line {block['line']}: needs {block['skip']}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop(SMALL_ENV, None)
    if small:
        env[SMALL_ENV] = "1"
    done = run_watched([sys.executable, "-c", block["code"]], cwd=folder, env=env)
    assert done.returncode == 0, (
        f"{block['doc']} block at line {block['line']} ({block['section']}) failed:\n{done.stderr[-4000:]}"
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(b) for b in BLOCKS])
def test_readme_block_runs_as_written(block, tmp_path):
    """About 1-20 s idle each."""
    run_block(block, tmp_path, small=True)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(b) for b in BLOCKS])
def test_readme_block_runs_at_full_size(block, tmp_path):
    """Slow: the paper's-plan block (docs/guide.md) took 50 min on 2 shared cores, the others a few minutes."""
    run_block(block, tmp_path, small=False)


def test_blocks_are_found_with_their_sections_and_skip_reasons():
    """Under 1 s idle."""
    markdown = "\n".join([
        "## A", "```bash", "# not a heading", "pip install x", "```",
        "```python", "print(1)", "```",
        "### B", "```python", "# needs: a GPU (not run by the tests)", "import torch", "```",
    ])
    blocks = python_blocks(markdown)
    assert [(b["section"], b["code"], b["skip"]) for b in blocks] == [
        ("A", "print(1)\n", None), ("B", "# needs: a GPU (not run by the tests)\nimport torch\n", "a GPU (not run by the tests)")]
    # the pages themselves: their blocks are all found, and few are skipped (the vLLM block needs vllm and a GPU)
    readme_blocks = [b for b in BLOCKS if b["doc"] == "README.md"]
    assert len(readme_blocks) >= 2 and len(BLOCKS) >= 7 and sum(b["skip"] is not None for b in BLOCKS) <= 1
    # a skip is said where a reader sees it, on the block's first line, never in an HTML comment
    assert all("readme-test: skip" not in (ROOT / doc).read_text() for doc in DOCS)


def test_the_quickstart_reading_quotes_only_figures_of_its_block():
    """The paragraph that reads the quickstart output cites figures from it: regenerated figures with an old reading
    would be caught here. Under 1 s idle."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart-output -->(.*?)<!-- /quickstart-output -->", readme, re.S)[1]
    reading = readme.split("<!-- /quickstart-output -->")[1].split("\n## ")[0]
    figures = re.findall(r"\d+\.\d+%?", reading)
    assert len(figures) >= 3
    assert [f for f in figures if f not in block] == []


def test_the_venv_and_cpu_torch_steps_come_before_the_commands_a_newcomer_copies():
    """Under 1 s idle."""
    readme = (ROOT / "README.md").read_text()
    first_install = readme.index("pip install -e .")
    assert readme.index("python3 -m venv") < first_install
    assert readme.index("pip install torch --index-url https://download.pytorch.org/whl/cpu") < first_install


def test_every_install_line_installs_from_the_checkout():
    """The package index's project of this name is another, older package: an extra installed by the package name
    (`pip install "self-rewarding-lm-pytorch[hf]"`) installs it instead of this checkout. Under 1 s idle."""
    by_name = re.compile(r"pip install\s+[\"']?self-rewarding-lm-pytorch")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "examples").glob("*.py"),
             *(ROOT / "self_rewarding_lm_pytorch").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    assert [str(f.relative_to(ROOT)) for f in files if by_name.search(f.read_text())] == []


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
