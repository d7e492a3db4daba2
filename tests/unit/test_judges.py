import math

import pytest
import torch

from self_rewarding_lm_pytorch.judging.judges import Candidates, RewardFnJudge


def candidates(*responses: str) -> Candidates:
    ids = [torch.tensor([1])] * len(responses)
    return Candidates(["q"] * len(responses), ids, list(responses), ids)


def test_reward_fn_numbers_bools_and_none_are_scores():
    values = iter([3, 2.5, True, None])
    scores = RewardFnJudge(lambda p, r: next(values))(candidates("a", "b", "c", "d")).scores[:, 0].tolist()
    assert scores[:3] == [3.0, 2.5, 1.0] and math.isnan(scores[3])


@pytest.mark.parametrize("value", ["5", "good", [1.0]])
def test_reward_fn_returning_a_non_number_names_the_function_and_the_value(value):
    def my_checker(prompt, response):
        return value

    with pytest.raises(TypeError, match=r"reward_fn .*my_checker returned .*must return a number") as error:
        RewardFnJudge(my_checker)(candidates("an answer"))
    assert repr(value) in str(error.value)


def test_parse_reward_returning_a_string_is_an_error_naming_it():
    from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig

    config = RewardConfig("{{ prompt }} {{ response }}", parse_reward=lambda text: text.split()[-1])
    with pytest.raises(TypeError, match=r"parse_reward returned '5'"):
        config.parse("Score: 5")
    assert RewardConfig("{{ prompt }} {{ response }}", parse_reward=lambda text: 4).parse("x") == 4.0
