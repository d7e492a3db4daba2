


LINEAR_CHECK = """
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
templates = [(" {{ reward }}", False), ("Score: {{ reward }}", True), ("{{ reward }}/10", True), ("Rating:\\n {{ reward }} pts", True)]
texts = [" " * 100_000, "1" * 100_000, "Score:" + " " * 100_000 + "x", "- " * 50_000, "1." * 50_000, "\\t\\n" * 50_000 + "5",
         "Score: " * 14_000, "+" * 100_000, "." * 100_000]
for template, dedent in templates:
    config = RewardConfig(prompt_template="{{ prompt }}{{ response }}", reward_regex_template=template, auto_dedent=dedent)
    for text in texts:
        config.parse(text)
print("done")
"""


def test_parsing_100k_character_outputs_is_linear_for_every_template():
    """Each parse takes milliseconds; the quadratic parser took minutes on the first text (10k spaces: 3.6 s).
    Run in a subprocess so a regression fails at the bound instead of hanging the suite."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", LINEAR_CHECK], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "done", run.stderr[-2000:]
