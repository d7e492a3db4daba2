"""Mistakes in a plan are errors when the orchestrator is built, naming the stage index, the field and the fix."""

import warnings

import pytest
import torch
from conftest import tiny_transformer

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    JudgementsAgree,
    MarginAtLeast,
    RewardConfig,
    SelfConsistencyDPOConfig,
    SelfPlayConfig,
    SelfRewardDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
)
from self_rewarding_lm_pytorch.generation import sampling
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

TOKENIZER = CharTokenizer()
PROMPTS = SortDigitsTask(seed=0).prompts(8)
SHORT_JUDGE = RewardConfig("judge {{ prompt }}{{ response }}|")


def small(**overrides):
    return dict(dict(num_preference_pairs=2, prompt_batch_size=2, response_max_new_tokens=6, num_train_steps=1,
                     batch_size=2), **overrides)


def build(*stages, eos_id=TOKENIZER.eos_id, max_seq_len=48, reward_config=SHORT_JUDGE, tmp_path="unused", **kwargs):
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=max_seq_len)
    sft = SFTConfig(train_dataset=SortDigitsTask(seed=1).instruction_examples(4), num_train_steps=1)
    return SelfRewardingTrainer(
        model, finetune_configs=[sft, *stages], tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
        self_reward_prompt_config=reward_config, eos_id=eos_id, checkpoints_folder=tmp_path,
        accelerate_kwargs=dict(cpu=True), **kwargs,
    )


def checker(prompt: str, response: str) -> float:
    return float(len(response))


def test_a_well_formed_plan_builds_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(SelfRewardDPOConfig(prompt_dataset=PROMPTS, judge_max_new_tokens=8, pair_filters=(JudgementsAgree(),),
                                  **small()),
              ExternalRewardDPOConfig(prompt_dataset=PROMPTS, reward_fn=checker, **small()),
              SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, min_vote_margin=0.25, **small()))


def test_the_default_judge_prompt_that_cannot_fit_the_model_is_an_error_at_construction():
    # the paper's ~1,750-character prompt with a character tokenizer, in a 256-position model
    with pytest.raises(ValueError, match=r"finetune_configs\[1\] \(SelfRewardDPOConfig\): the judge prompt .*"
                                         r"judge_max_new_tokens.*max_seq_len is 256.*shorter RewardConfig"):
        build(SelfRewardDPOConfig(prompt_dataset=PROMPTS, **small()), max_seq_len=256, reward_config=RewardConfig())
    # the short prompt fits, but not with a 256-token judgement
    with pytest.raises(ValueError, match=r"finetune_configs\[1\].*256 tokens for the judgement"):
        build(SelfRewardDPOConfig(prompt_dataset=PROMPTS, judge_max_new_tokens=256, **small()), max_seq_len=256)


def test_prompts_that_are_not_strings_are_an_error_at_construction():
    tensors = [torch.tensor([1, 2, 3])] * 4
    with pytest.raises(TypeError, match=r"finetune_configs\[1\] \(ExternalRewardDPOConfig\)\.prompt_dataset\[0\] is a "
                                        r"Tensor; prompt datasets hold strings"):
        build(ExternalRewardDPOConfig(prompt_dataset=tensors, reward_fn=checker, **small()))


def test_a_prompt_longer_than_max_seq_len_is_an_error_at_construction():
    prompts = PROMPTS[:3] + ["sort " + "1 " * 30 + ":"]
    with pytest.raises(ValueError, match=r"finetune_configs\[1\].*prompt_dataset\[3\] .* is 66 tokens.*max_seq_len=48"):
        build(ExternalRewardDPOConfig(prompt_dataset=prompts, reward_fn=checker, **small()))


def test_a_spin_prompt_without_room_to_generate_is_an_error_at_construction():
    long_prompt = [(torch.arange(20) % 10 + 1, 18)]
    with pytest.raises(ValueError, match=r"finetune_configs\[1\] \(SelfPlayConfig\)\.train_sft_dataset: .*raise max_seq_len"):
        build(SelfPlayConfig(train_sft_dataset=long_prompt, max_seq_len=16, num_train_steps=1))


def test_reward_fn_not_callable_is_an_error_naming_the_field():
    with pytest.raises(TypeError, match=r"ExternalRewardDPOConfig\.reward_fn must be a callable"):
        ExternalRewardDPOConfig(prompt_dataset=PROMPTS, reward_fn="exact_match", **small())


def test_reward_fn_returning_a_non_number_is_an_error_at_construction_unless_the_check_is_off():
    def grade(prompt, response):
        return "good"

    with pytest.raises(TypeError, match=r"finetune_configs\[1\] \(ExternalRewardDPOConfig\)\.reward_fn failed on a "
                                        r"sample.*grade returned 'good'.*check_reward_fn_on_sample=False"):
        build(ExternalRewardDPOConfig(prompt_dataset=PROMPTS, reward_fn=grade, **small()))

    calls = []
    build(ExternalRewardDPOConfig(prompt_dataset=PROMPTS, reward_fn=lambda p, r: calls.append(p),
                                  check_reward_fn_on_sample=False, **small()))
    assert calls == []


def test_a_missing_eos_id_warns_once_saying_what_happens(monkeypatch):
    monkeypatch.setattr(sampling, "_warned_missing_eos", False)
    stages = [SelfPlayConfig(train_sft_dataset=SortDigitsTask(seed=1).instruction_examples(4), max_seq_len=32,
                             num_train_steps=1)]
    with pytest.warns(UserWarning, match=r"eos_id is None but stage 1 \(SelfPlayConfig\) generates text: .*runs on to "
                                         r"its full token budget \(max_seq_len=32\).*Pass eos_id") as record:
        build(*stages, eos_id=None)
        build(*stages, eos_id=None)
    assert sum("eos_id is None" in str(w.message) for w in record) == 1


def test_spin_alone_without_eos_id_warns_too(monkeypatch):
    from self_rewarding_lm_pytorch import SPINTrainer

    monkeypatch.setattr(sampling, "_warned_missing_eos", False)
    with pytest.warns(UserWarning, match=r"eos_id is None but SPINTrainer generates text"):
        SPINTrainer(tiny_transformer(num_tokens=TOKENIZER.num_tokens), train_sft_dataset=SortDigitsTask(seed=1)
                    .instruction_examples(4), max_seq_len=32, num_train_steps=1, accelerate_kwargs=dict(cpu=True))


@pytest.mark.parametrize("field", ["verifier", "is_valid_reward_pair"])
def test_optional_functions_that_are_not_callable_are_errors_naming_the_field(field):
    with pytest.raises(TypeError, match=rf"SelfRewardDPOConfig\.{field} must be callable, got a str"):
        SelfRewardDPOConfig(prompt_dataset=PROMPTS, **small(), **{field: "exact_match"})


# the newer stages get the same checks: self-consistency prompts and answer_key, pair filters that cannot work


def test_self_consistency_prompts_are_checked_at_construction():
    tensors = [torch.tensor([1, 2, 3])] * 4
    with pytest.raises(TypeError, match=r"finetune_configs\[1\] \(SelfConsistencyDPOConfig\)\.prompt_dataset\[0\] is a Tensor"):
        build(SelfConsistencyDPOConfig(prompt_dataset=tensors, **small()))
    prompts = PROMPTS[:3] + ["sort " + "1 " * 30 + ":"]
    with pytest.raises(ValueError, match=r"finetune_configs\[1\] \(SelfConsistencyDPOConfig\)\.prompt_dataset\[3\] .* is "
                                         r"66 tokens.*max_seq_len=48"):
        build(SelfConsistencyDPOConfig(prompt_dataset=prompts, **small()))


def test_a_self_consistency_answer_key_that_cannot_vote_is_an_error_at_construction():
    # a list is not hashable: the votes could not be counted when the stage starts
    with pytest.raises(TypeError, match=r"finetune_configs\[1\] \(SelfConsistencyDPOConfig\)\.answer_key returned a "
                                        r"list for the answer ''.*hashable"):
        build(SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, answer_key=str.split, **small()))


def test_self_consistency_alone_without_eos_id_warns(monkeypatch):
    monkeypatch.setattr(sampling, "_warned_missing_eos", False)
    with pytest.warns(UserWarning, match=r"eos_id is None but stage 1 \(SelfConsistencyDPOConfig\) generates text"):
        build(SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, **small()), eos_id=None)


@pytest.mark.parametrize("stage", [
    lambda: SelfRewardDPOConfig(prompt_dataset=PROMPTS, judge_max_new_tokens=8, num_judgements=1,
                                pair_filters=(JudgementsAgree(),), **small()),
    lambda: ExternalRewardDPOConfig(prompt_dataset=PROMPTS, reward_fn=checker, pair_filters=(JudgementsAgree(),), **small()),
    lambda: SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, pair_filters=(JudgementsAgree(),), **small()),
], ids=["self-reward-one-judgement", "external", "self-consistency"])
def test_judgements_agree_with_a_single_judgement_is_an_error_at_construction(stage):
    """With one judgement per candidate the best-vs-worst pair always 'agrees': the filter would keep every pair."""
    with pytest.raises(ValueError, match=r"finetune_configs\[1\] \(\w+\)\.pair_filters\[0\] \(JudgementsAgree\) "
                                         r"compares .* judgements.*one judgement.*keeps every pair"):
        build(stage())


@pytest.mark.parametrize("stage, scale", [
    (lambda: SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, pair_filters=(MarginAtLeast(1.5),), **small()),
     "vote shares.*1"),
    (lambda: SelfRewardDPOConfig(prompt_dataset=PROMPTS, judge_max_new_tokens=8, pair_filters=(MarginAtLeast(6),),
                                 reward_config=RewardConfig("judge {{ prompt }}{{ response }}|", score_range=(0, 5)),
                                 **small()),
     r"score_range \(0, 5\)"),
], ids=["self-consistency", "self-reward"])
def test_a_margin_wider_than_the_score_scale_is_an_error_at_construction(stage, scale):
    """No two scores on the scale differ by that much: the filter would drop every pair, found hours in."""
    with pytest.raises(ValueError, match=rf"finetune_configs\[1\] \(\w+\)\.pair_filters\[0\] \(MarginAtLeast\(.*\)\).*"
                                         rf"{scale}.*drop every pair"):
        build(stage())


def test_min_vote_margin_beside_another_margin_filter_is_an_error_not_ignored():
    """The vote margin used to be skipped silently when pair_filters already held a MarginAtLeast."""
    with pytest.raises(ValueError, match=r"SelfConsistencyDPOConfig\.min_vote_margin=0\.5 .* MarginAtLeast\(margin=0\.25"):
        SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, min_vote_margin=0.5, pair_filters=(MarginAtLeast(0.25),), **small())
    # building it again from its own fields (dataclasses.replace) keeps the one vote-margin filter
    import dataclasses

    config = SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, min_vote_margin=0.5, **small())
    assert [f.name for f in dataclasses.replace(config, num_train_steps=2).pair_filters] == ["vote_margin"]


@pytest.mark.parametrize("stage", [
    lambda: SelfRewardDPOConfig(prompt_dataset=PROMPTS, judge_max_new_tokens=8, **small(temperature=0.0)),
    lambda: ExternalRewardDPOConfig(prompt_dataset=PROMPTS, reward_fn=checker, **small(temperature=0.0)),
    lambda: SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, **small(temperature=0.0)),
], ids=["self-reward", "external", "self-consistency"])
def test_greedy_candidates_are_an_error_at_construction(stage):
    """At temperature 0 the N candidates of a prompt are one text N times: every pair is dropped as identical."""
    with pytest.raises(ValueError, match=r"\w+DPOConfig\.temperature is 0.*4 candidates.*the same text.*no pair"):
        stage()


def test_the_judge_prompt_is_measured_with_the_judge_tokenizer():
    """judge_tokenizer_encode (e.g. a chat template around the judge prompt) is what the judge feeds the model."""
    def judge_encode(text):
        return TOKENIZER.encode("<a long system prompt for the judge, as chat templates add>" + text)

    stage = SelfRewardDPOConfig(prompt_dataset=PROMPTS, judge_max_new_tokens=8, **small())
    build(stage)  # fits with the task tokenizer
    with pytest.raises(ValueError, match=r"finetune_configs\[1\] \(SelfRewardDPOConfig\): the judge prompt"):
        build(stage, judge_tokenizer_encode=judge_encode)
