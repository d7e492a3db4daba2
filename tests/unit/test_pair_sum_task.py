import pytest

from self_rewarding_lm_pytorch.tasks.pair_sum import (
    CharTokenizer,
    PairSumTask,
    answer_key,
    graded_score,
    is_correct,
    parse_prompt,
    solve,
    valid_pairs,
)

PROMPT = "pair 3 7 1 8 5 2 = 10:"  # right: 3+7, 8+2 (and 5+5 is not: 5 is listed once)


@pytest.mark.parametrize("response", [" 3 7", " 7 3", " 2 8", " 8 2", "2 8", " 2  8 "])
def test_checker_accepts_every_valid_pair_in_either_order(response):
    assert is_correct(PROMPT, response)
    assert graded_score(PROMPT, response) == 5.0


@pytest.mark.parametrize(
    "response, score",
    [
        (" 5 5", 4.0),  # one listed digit used twice: the list supplies one 5, the sum is right
        (" 4 6", 3.0),  # right sum, neither digit listed
        (" 3 6", 1.0),  # 6 is not listed, wrong sum
        (" 1 9", 4.0),  # 9 is not listed
        (" 3 8", 2.0),  # both listed, wrong sum
        (" 1 2", 2.0),
        (" 2 8 1", 0.0),  # three digits
        (" 2", 0.0),
        (" 28", 0.0),  # one two-digit number
        (" 2 x", 0.0),
        ("banana", 0.0),
        ("", 0.0),
    ],
)
def test_checker_rejects_and_grades_wrong_answers(response, score):
    assert not is_correct(PROMPT, response)
    assert graded_score(PROMPT, response) == score


def test_a_digit_listed_twice_may_be_used_twice():
    assert is_correct("pair 5 1 5 = 10:", " 5 5")
    assert not is_correct("pair 5 1 4 = 10:", " 5 5")


def test_answer_key_is_the_sorted_pair_and_agrees_with_the_checker():
    assert answer_key(" 7 3") == answer_key(" 3 7") == answer_key("3 7") == (3, 7)
    assert answer_key(" 3 7 1") is None and answer_key("x y") is None
    # responses with the same key are equally right, so a vote for a key is a vote for rightness
    for response in [" 3 7", " 7 3", " 2 8", " 5 5", " 3 8"]:
        assert is_correct(PROMPT, response) == (answer_key(response) in valid_pairs(*parse_prompt(PROMPT)))


def test_valid_pairs_and_solve_by_hand():
    assert parse_prompt(PROMPT) == ([3, 7, 1, 8, 5, 2], 10)
    assert valid_pairs([3, 7, 1, 8, 5, 2], 10) == [(2, 8), (3, 7)]
    assert solve([3, 7, 1, 8, 5, 2], 10) == " 2 8"
    with pytest.raises(ValueError, match="no two"):
        solve([3, 7, 1], 5)
    with pytest.raises(ValueError, match="not a pair_sum prompt"):
        is_correct("sort 3 1 2:", " 1 2")


def test_every_generated_prompt_has_a_solution_and_distinct_digits():
    prompts = PairSumTask(seed=4).prompts(2_000)
    for prompt in prompts:
        digits, target = parse_prompt(prompt)
        assert len(digits) == 6 == len(set(digits)) and valid_pairs(digits, target)
    targets = {parse_prompt(p)[1] for p in prompts}
    assert targets == set(range(3, 18))  # every reachable target occurs
    assert any(len(valid_pairs(*parse_prompt(p))) > 1 for p in prompts)  # some prompts have several answers


def test_instruction_examples_pass_the_checker_and_end_in_eos():
    task = PairSumTask(seed=1)
    for seq, prompt_len in task.instruction_examples(200):
        prompt, response = task.tokenizer.decode(seq[:prompt_len]), task.tokenizer.decode(seq[prompt_len:])
        assert prompt.startswith("pair ") and prompt.endswith(":")
        assert seq[-1].item() == CharTokenizer.eos_id
        assert is_correct(prompt, response) and answer_key(response) == tuple(int(d) for d in response.split())


def test_judge_examples_answer_with_the_graded_score_and_cover_right_and_wrong():
    task = PairSumTask(seed=2)
    scores = []
    for seq, prompt_len in task.judge_examples(200, judge_prompt=lambda p, r: f"{p}|{r}\n"):
        prompt, answer = task.tokenizer.decode(seq[:prompt_len]), task.tokenizer.decode(seq[prompt_len:])
        task_prompt, response = prompt.rstrip("\n").split("|")
        assert answer == f"Score: {graded_score(task_prompt, response):g}"
        scores.append(graded_score(task_prompt, response))
    assert 5.0 in scores and {2.0, 3.0, 4.0} & set(scores)


def test_same_seed_same_prompts_and_length_is_checked():
    assert PairSumTask(seed=3).prompts(5) == PairSumTask(seed=3).prompts(5)
    assert PairSumTask(seed=3).prompts(5) != PairSumTask(seed=3).reseed(4).prompts(5)
    with pytest.raises(ValueError, match="length"):
        PairSumTask(length=10)
