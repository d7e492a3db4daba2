"""The reward parser on 100k-character outputs, in a subprocess bounded by its CPU time."""

import sys

from helpers import run_watched

LINEAR_CHECK = """
import time
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
templates = [(" {{ reward }}", False), ("Score: {{ reward }}", True), ("{{ reward }}/10", True), ("Rating:\\n {{ reward }} pts", True)]
texts = [" " * 100_000, "1" * 100_000, "Score:" + " " * 100_000 + "x", "- " * 50_000, "1." * 50_000, "\\t\\n" * 50_000 + "5",
         "Score: " * 14_000, "+" * 100_000, "." * 100_000]
for template, dedent in templates:
    config = RewardConfig(prompt_template="{{ prompt }}{{ response }}", reward_regex_template=template, auto_dedent=dedent)
    for text in texts:
        config.parse(text)
        if time.process_time() > 60:  # CPU time: a loaded machine does not inflate it
            raise SystemExit(f"parsing took over 60 s of CPU by template {template!r}: not linear")
print("done")
"""


def test_parsing_100k_character_outputs_is_linear_for_every_template():
    """Each parse takes milliseconds (the whole child about 3 s idle, most of it imports); the quadratic parser took
    minutes on the first text (10k spaces: 3.6 s). The child stops itself past 60 s of CPU time, so a regression fails
    at that bound whatever the machine's load, and the hang guard is only for a child that hangs."""
    run = run_watched([sys.executable, "-c", LINEAR_CHECK])
    assert run.stdout.strip() == "done", run.stderr[-2000:]
