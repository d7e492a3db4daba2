import pytest

from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig

DEFAULT = RewardConfig()


@pytest.mark.parametrize(
    "judge_output, score",
    [
        ("The response is relevant and complete.\nScore: 4", 4.0),  # no trailing newline (the original missed it)
        ("Score: 4.5\n", 4.5),  # decimals (the original rejected them)
        ('Conclude with "Score: <total points>"\nThe answer is correct.\nScore: 3', 3.0),  # format restated first
        ("Score: 2\nOn reflection, one more point.\nScore: 3\n", 3.0),  # several scores: the last one counts
        ("Score:   5", 5.0),  # extra spaces
        ("Score: 4.", 4.0),  # a full stop after the number
        ("I cannot judge this.", None),  # garbage
        ("Score: ten", None),
        ("", None),
        ("Score: 17", 17.0),  # parsed; whether 17 is valid is the score_range's business, not the parser's
        ("Score: -1", -1.0),
    ],
)
def test_default_parser_on_realistic_judge_outputs(judge_output, score):
    assert DEFAULT.parse(judge_output) == score


def test_default_config_is_the_paper_prompt_on_a_0_to_5_scale():
    text = DEFAULT.render("What is 2 + 2?", "4")
    assert "User: What is 2 + 2?" in text and "<response>4</response>" in text and '"Score: <total points>"' in text
    assert "additive 5-point" in text
    assert DEFAULT.score_range == (0, 5) and DEFAULT.is_in_range(5) and not DEFAULT.is_in_range(17)


def test_the_readme_custom_config():
    config = RewardConfig(
        prompt_template="""
        Pretty please rate the following user prompt and response
        User: {{ prompt }}
        Response: {{ response }}

        Format your score as follows:
        Rating: <rating as integer from 0 - 10>
        """,
        reward_regex_template="""
        Rating: {{ reward }}
        """,
    )
    assert config.render("hi", "hello").startswith("Pretty please rate the following user prompt and response\nUser: hi\n")
    assert config.parse("Rating: <rating as integer from 0 - 10>\nRating: 7") == 7.0
    assert config.parse("Score: 7") is None
    assert config.score_range is None  # a custom scale: any number is on it unless the user says otherwise


def test_regex_characters_in_the_template_are_literal():
    config = RewardConfig("{{ prompt }} {{ response }}", reward_regex_template="Score (0-5): [[{{ reward }}]]")
    assert config.parse("Score (0-5): [[4.5]]") == 4.5
    assert config.parse("Score 0-5: 4.5") is None
    dotted = RewardConfig("{{ prompt }} {{ response }}", reward_regex_template="a.b {{ reward }}")
    assert dotted.parse("axb 3") is None and dotted.parse("a.b 3") == 3.0


def test_user_text_is_inserted_literally():
    config = RewardConfig("Q: {{ prompt }}\nA: {{ response }}")
    response = "use {{ prompt }} and {braces} and \\1 and {{ reward }}"
    assert config.render("p", response) == f"Q: p\nA: {response}"
    assert RewardConfig("{{prompt}}|{{response}}").render("a", "b") == "a|b"  # spacing inside braces is free


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt_template="Rate: {{ prompt }}"), r"missing: \['response'\]"),
        (dict(prompt_template="{{ prompt }} {{ response }} {{ foo }}"), r"unknown: \['foo'\]"),
        (dict(prompt_template="{{ prompt }} {{ response }}", reward_regex_template="Score: <n>"), "exactly once"),
        (dict(prompt_template="{{ prompt }} {{ response }}", reward_regex_template="{{ reward }} / {{ reward }}"),
         "exactly once"),
        (dict(prompt_template="{{ prompt }} {{ response }}", reward_regex_template="S: {{ reward }}",
              parse_reward=lambda s: 1.0), "not both"),
        (dict(prompt_template="{{ prompt }} {{ response }}", score_range=(5, 0)), "low < high"),
    ],
)
def test_template_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardConfig(**kwargs)


def test_custom_parse_function():
    config = RewardConfig("{{ prompt }} {{ response }}", parse_reward=lambda text: len(text) if text else None)
    assert config.parse("abc") == 3.0 and config.parse("") is None


def test_only_ascii_digits_are_scores():
    assert DEFAULT.parse("Score: ٣") is None  # Arabic-Indic three
    assert DEFAULT.parse("Score: ３") is None  # full-width three
    assert DEFAULT.parse("Score: ٣\nScore: 2") == 2.0


def test_a_whitespace_run_matches_any_whitespace_including_none():
    config = RewardConfig(reward_regex_template="Rating:\n  {{ reward }} points")
    assert config.parse("Rating:7points") == 7.0
    assert config.parse("Rating: \t\n 7 \n points") == 7.0
