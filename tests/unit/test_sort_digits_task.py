import pytest
import torch

from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask, graded_score, is_correct


@pytest.mark.parametrize(
    "response, correct, score",
    [
        (" 1 2 3 4", True, 5.0),
        ("1 2 3 4", True, 5.0),
        (" 1 2 4 3", False, 3.0),  # a permutation with 2 positions right: (1 + 2) / 5 * 5
        (" 3 1 2 4", False, 2.0),  # the prompt's order: permutation, last position right
        (" 1 2 3", False, 0.0),  # wrong length, not a permutation
        (" 1 2 3 9", False, 3.0),  # not a permutation, 3 positions right
        ("banana", False, 0.0),
        ("", False, 0.0),
    ],
)
def test_checker_and_graded_score(response, correct, score):
    assert is_correct("sort 3 1 2 4:", response) is correct
    assert graded_score("sort 3 1 2 4:", response) == score


def test_instruction_examples_end_in_eos_and_mark_the_prompt():
    task = SortDigitsTask(length=3, seed=1)
    seq, prompt_len = task.instruction_examples(1)[0]
    text = task.tokenizer.decode(seq[:prompt_len])
    assert text.startswith("sort ") and text.endswith(":")
    assert seq[-1].item() == CharTokenizer.eos_id
    assert is_correct(text, task.tokenizer.decode(seq[prompt_len:]))


def test_judge_examples_answer_with_the_graded_score():
    task = SortDigitsTask(seed=2)
    for seq, prompt_len in task.judge_examples(20, judge_prompt=lambda p, r: f"{p}|{r}\n"):
        prompt, answer = task.tokenizer.decode(seq[:prompt_len]), task.tokenizer.decode(seq[prompt_len:])
        task_prompt, response = prompt.rstrip("\n").split("|")
        assert answer == f"Score: {graded_score(task_prompt, response):g}"


def test_same_seed_same_data_and_tokenizer_round_trip():
    assert SortDigitsTask(seed=3).prompts(5) == SortDigitsTask(seed=3).prompts(5)
    tok = CharTokenizer()
    assert tok.decode(torch.cat([tok.encode("sort 1 2:"), torch.tensor([0, 65, -1])])) == "sort 1 2:"
    with pytest.raises(ValueError, match="ASCII"):
        tok.encode("é")
