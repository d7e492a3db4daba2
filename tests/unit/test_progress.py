"""Every long phase shows a bar on the main process: pair generation (prompts, pairs kept, parse and tie rates),
SPIN's answers and reference log-probs; a bar that halts early says why."""

import pytest
from helpers import generate

from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.judging.judges import RewardFnJudge, SelfJudge
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

TOKENIZER = CharTokenizer()


def test_pair_generation_shows_prompts_pairs_parse_and_tie_rates(char_model, tmp_path, capsys):
    generate(char_model, SortDigitsTask(seed=1).prompts(16), RewardFnJudge(lambda p, r: float(sum(map(ord, r)))), tmp_path,
             num_preference_pairs=3)
    err = capsys.readouterr().err
    assert "pairs:" in err and ("prompt/s" in err or "s/prompt" in err)
    assert "/16" in err  # prompts done out of the budget
    assert "pairs=3/3, parse=1.00, ties=0.00, identical=0" in err


def test_pair_generation_that_gives_up_early_says_why(char_model, tmp_path, capsys):
    judge = SelfJudge(char_model, RewardConfig("{{ prompt }}|{{ response }}|"), tokenizer_encode=TOKENIZER.encode,
                      tokenizer_decode=TOKENIZER.decode, num_judgements=1, max_new_tokens=4, eos_id=0)
    with pytest.raises(PairGenerationError):
        generate(char_model, SortDigitsTask(seed=2).prompts(40), judge, tmp_path, fail_fast_after_prompts=8)
    assert "pair generation stops early: no usable judgement in 8 prompts (fail_fast_after_prompts=8)" in \
        "".join(capsys.readouterr())


def test_judge_examples_from_own_answers_and_judge_mistakes_show_bars_unless_told_not_to(char_model, capsys):
    from self_rewarding_lm_pytorch.judging.eft import judge_mistakes, own_answer_judge_examples

    reward_config = RewardConfig("j {{ prompt }}{{ response }}|", reward_regex_template="Score: {{ reward }}")
    prompts = SortDigitsTask(seed=3).prompts(6)

    def run(show_progress):
        judge_set = own_answer_judge_examples(
            char_model, prompts, labeller=lambda p, r: sum(map(ord, r)) % 2 == 0, reward_config=reward_config,
            tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode, num_samples=2, max_new_tokens=3,
            temperature=(0.0, 1.0), balance=False, eos_id=0, batch_size=4, show_progress=show_progress)
        judge_mistakes(char_model, judge_set.labelled, reward_config=reward_config, tokenizer_encode=TOKENIZER.encode,
                       tokenizer_decode=TOKENIZER.decode, max_new_tokens=3, eos_id=0, batch_size=4,
                       show_progress=show_progress)
        return capsys.readouterr().err

    err = run(True)
    assert "judge examples: answers" in err and "4/4" in err  # 2 temperatures x 2 batches of prompts
    assert "judge mistakes" in err
    quiet = run(False)
    assert "judge examples" not in quiet and "judge mistakes" not in quiet
