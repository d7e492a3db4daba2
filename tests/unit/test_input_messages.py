"""A newcomer's usual first mistakes are refused with a message that shows the fix: a reward function of the wrong
signature says it is called as `reward_fn(prompt, response)`, and a prompt dataset of dicts points to `PromptFields`."""

import functools
import re

import pytest
import torch
from accelerate import Accelerator
from conftest import tiny_transformer

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    PromptFields,
    SelfConsistencyDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
)
from self_rewarding_lm_pytorch.judging.judges import RewardFnJudge
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.loop import generate_preference_pairs
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

TOKENIZER = CharTokenizer()
PROMPTS = SortDigitsTask(seed=0).prompts(4)
SMALL = {"num_preference_pairs": 2, "prompt_batch_size": 2, "response_max_new_tokens": 6, "num_train_steps": 1,
         "batch_size": 2}


def external(reward_fn, prompts=PROMPTS):
    return ExternalRewardDPOConfig(prompt_dataset=prompts, reward_fn=reward_fn, **SMALL)


def grade_against(prompt, response, gold):
    return float(response == gold)


@pytest.mark.parametrize("reward_fn, shown", [
    (lambda response: 1.0, "<lambda>(response)"),
    (grade_against, "grade_against(prompt, response, gold)"),
    (lambda: 1.0, "<lambda>()"),
])
def test_a_reward_fn_of_the_wrong_signature_shows_the_expected_one(reward_fn, shown):
    with pytest.raises(TypeError) as error:
        external(reward_fn)
    assert str(error.value) == (
        f"ExternalRewardDPOConfig.reward_fn is called as reward_fn(prompt, response), with the decoded prompt and the "
        f"model's answer, but {shown} does not take those two arguments: define it as def reward_fn(prompt: str, "
        f"response: str) -> float | bool | None (None: no score), binding any other argument first (functools.partial)"
    )
    with pytest.raises(TypeError, match=re.escape(f"RewardFnJudge.reward_fn is called as reward_fn(prompt, response)"
                                                  f", with the decoded prompt and the model's answer, but {shown}")):
        RewardFnJudge(reward_fn)


class Checker:
    def __call__(self, prompt, response):
        return 1.0


@pytest.mark.parametrize("reward_fn", [
    lambda prompt, response: 1.0,
    lambda prompt, response, gold=None: 1.0,  # defaults may follow
    lambda *args: 1.0,
    functools.partial(grade_against, gold=" 1 2"),  # the fix the message suggests
    Checker(),
    max,  # a builtin: its signature may not be readable, so it is not refused for that
])
def test_a_reward_fn_that_takes_prompt_and_response_is_accepted(reward_fn):
    assert external(reward_fn).reward_fn is reward_fn
    assert RewardFnJudge(reward_fn).reward_fn is reward_fn


def test_a_reward_fn_that_is_not_callable_still_says_what_it_must_be():
    with pytest.raises(TypeError, match=r"^ExternalRewardDPOConfig.reward_fn must be a callable \(prompt: str, response: "
                                        r"str\) -> float \| bool \| None \(None: no score\), got a str$"):
        external("exact_match")


def build(stage):
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    sft = SFTConfig(train_dataset=SortDigitsTask(seed=1).instruction_examples(4), num_train_steps=1)
    return SelfRewardingTrainer(model, finetune_configs=[sft, stage], tokenizer_encode=TOKENIZER.encode,
                                tokenizer_decode=TOKENIZER.decode, eos_id=TOKENIZER.eos_id, checkpoints_folder="unused",
                                accelerate_kwargs={"cpu": True})


def records(key):
    return [{key: prompt, "answer": "x"} for prompt in PROMPTS]


@pytest.mark.parametrize("key, how", [
    ("prompt", "prompt_field='prompt'"),
    ("question", "prompt_field='question'"),
    ("text", "prompt_field=<the key of the prompt text>"),
])
def test_a_prompt_dataset_of_dicts_is_refused_pointing_to_prompt_fields(key, how):
    keys = sorted([key, "answer"])
    with pytest.raises(TypeError) as error:
        build(SelfConsistencyDPOConfig(prompt_dataset=records(key), **SMALL))
    assert str(error.value) == (
        f"finetune_configs[1] (SelfConsistencyDPOConfig).prompt_dataset[0] is a dict; prompt datasets hold strings "
        f"(each is encoded with tokenizer_encode): wrap a dataset of dicts (its items' keys: {keys}) in PromptFields, "
        f"which reads each prompt string by its key: PromptFields(dataset, {how})"
    )


def test_the_fix_the_message_shows_builds():
    build(SelfConsistencyDPOConfig(prompt_dataset=PromptFields(records("prompt"), prompt_field="prompt"), **SMALL))
    conversations = [{"messages": [{"role": "user", "content": prompt}]} for prompt in PROMPTS]
    with pytest.raises(TypeError, match=re.escape("PromptFields(dataset, messages_field='messages')")):
        build(SelfConsistencyDPOConfig(prompt_dataset=conversations, **SMALL))
    build(SelfConsistencyDPOConfig(prompt_dataset=PromptFields(conversations, messages_field="messages"), **SMALL))


def test_pair_generation_on_its_own_refuses_dict_prompts_before_generating(tmp_path):
    config = PairGenerationConfig(num_preference_pairs=2, prompt_batch_size=2, response_max_new_tokens=4)
    with pytest.raises(TypeError, match=re.escape("prompt_dataset[0] is a dict; prompt datasets hold strings") + ".*" +
                       re.escape("PromptFields(dataset, prompt_field='prompt')")):
        generate_preference_pairs(tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48), records("prompt"),
                                  RewardFnJudge(lambda prompt, response: 1.0), config, folder=tmp_path,
                                  tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                                  accelerator=Accelerator(cpu=True))
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_token_id_prompts_say_to_pass_text():
    with pytest.raises(TypeError, match=r"prompt_dataset\[0\] is a Tensor; prompt datasets hold strings .*: prompts "
                                        r"are text, encoded by the stage: decode the token ids, or pass the prompt strings"):
        build(SelfConsistencyDPOConfig(prompt_dataset=[torch.tensor([1, 2, 3])] * 4, **SMALL))


def test_a_verifier_of_the_wrong_signature_shows_the_expected_one_too():
    with pytest.raises(TypeError, match=re.escape("PairGenerationConfig.verifier is called as verifier(prompt, response)")
                       + ".*" + re.escape("but <lambda>(response) does not take those two arguments")):
        PairGenerationConfig(num_preference_pairs=2, verifier=lambda response: True)
    assert PairGenerationConfig(num_preference_pairs=2, verifier=lambda prompt, response: True).verifier is not None
