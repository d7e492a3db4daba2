"""Every long phase shows a bar on the main process: pair generation (prompts, pairs kept, parse and tie rates),
SPIN's answers and reference log-probs; a bar that halts early says why."""

import pytest

from self_rewarding_lm_pytorch.training.dpo import DPOTrainer
from self_rewarding_lm_pytorch.training.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.judging.judges import RewardFnJudge, SelfJudge
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.training.spin import SPINTrainer
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

from test_pair_generation import char_model, generate  # noqa: F401  (a fixture and a helper shared with it)
from test_dpo import sort_pairs

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


def test_spin_shows_its_answer_generation(char_model, tmp_path, capsys):
    task = SortDigitsTask(length=3, seed=0)
    SPINTrainer(char_model, train_sft_dataset=task.instruction_examples(12), max_seq_len=24, num_train_steps=1,
                batch_size=4, eos_id=0, checkpoint_folder=tmp_path, accelerate_kwargs=dict(cpu=True))()
    err = capsys.readouterr().err
    assert "spin answers (iteration 0): 100%" in err and "12/12" in err


def test_early_stopping_says_why_the_bar_halted(make_transformer, capsys):
    scores = iter([1.0, 2.0, 3.0])
    stopper = EarlyStopper(lambda model: next(scores), mode="min", patience=2)
    DPOTrainer(make_transformer(num_tokens=128), sort_pairs(32, seed=0), batch_size=8, num_train_steps=100,
               early_stopper=stopper, early_stop_every=1, accelerate_kwargs=dict(cpu=True))()
    assert ("dpo: early stop at step 3: the score did not improve by more than 0 in 2 evaluations (patience); "
            "best score 1 (min) at step 1, whose weights are restored") in "".join(capsys.readouterr())


def test_dpo_shows_its_reference_log_prob_pass(make_transformer, capsys):
    """External pairs without reference log-probs get them in one pass before the first step: it shows a bar."""
    DPOTrainer(make_transformer(num_tokens=128), sort_pairs(20, seed=0), valid_dataset=sort_pairs(6, seed=1),
               batch_size=8, num_train_steps=1, accelerate_kwargs=dict(cpu=True))()
    err = capsys.readouterr().err
    assert "dpo reference log-probs: 100%" in err and "20/20" in err
    assert "dpo reference log-probs (valid): 100%" in err and "6/6" in err


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
