"""Rewrite the README's quickstart output block from a real run: `python scripts/regenerate_readme_quickstart.py`.

Runs `examples/quickstart.py` in a fresh temporary folder (so nothing is resumed), and puts what it printed, from
the line "before training" on, between the README's `<!-- quickstart-output -->` and `<!-- /quickstart-output -->`
markers. The figures in the README are never typed by hand.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- quickstart-output -->", "<!-- /quickstart-output -->"


def quickstart_output() -> str:
    with tempfile.TemporaryDirectory() as folder:
        run = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=folder,
                             capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("before training"))
    return "\n".join(lines[first:])


def replace_block(readme: str, output: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n```\n{output}\n```\n{END}", readme)


if __name__ == "__main__":
    output = quickstart_output()
    path = ROOT / "README.md"
    path.write_text(replace_block(path.read_text(), output))
    print(output)
