"""Checks of a whole plan when the orchestrator is built, so a mistake surfaces before hours of earlier stages.

A config checks its own fields (`__post_init__`); what needs the model, the tokenizer or the judge too is checked
here: every prompt is a string that leaves room for an answer, the judge prompt rendered (with the judge's
tokenizer) with the longest prompt and a full-length answer fits the model, `reward_fn` returns a number and
`answer_key` a hashable answer on a sample, pair filters can keep and drop pairs with the stage's judge, and
generation has an EOS id. Each error names the stage index, the field and the fix.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor
from self_rewarding_lm_pytorch.judging.judges import check_reward_value
from self_rewarding_lm_pytorch.pairs.selection import JudgementsAgree, MarginAtLeast
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.generation.sampling import warn_missing_eos
from self_rewarding_lm_pytorch.models.decoders import absolute_position_limit
from self_rewarding_lm_pytorch.models.sharding import is_fully_sharded
from self_rewarding_lm_pytorch.training.spin import SelfPlayConfig, spin_items
from self_rewarding_lm_pytorch.stages.configs import (
    ExternalRewardDPOConfig,
    MetaRewardDPOConfig,
    SelfConsistencyDPOConfig,
    SelfRewardDPOConfig,
)

PREFERENCE_STAGES = (SelfRewardDPOConfig, ExternalRewardDPOConfig, SelfConsistencyDPOConfig)  # MetaRewardDPOConfig too



def model_length_limit(model: nn.Module) -> int | None:
    """The longest sequence the model takes: learned absolute positions, else its declared `max_seq_len`."""
    return absolute_position_limit(model) or getattr(model, "max_seq_len", None)


def check_stages(
    stages: list,
    model: nn.Module,
    *,
    encode: Callable[[str], Tensor],
    reward_config: RewardConfig,
    pad_id: int,
    eos_id: int | None,
    judge_encode: Callable[[str], Tensor] | None = None,
):
    """Raise at construction for inputs a stage would fail on when it starts; warn once for a missing eos_id.
    `judge_encode` is what the self-judge encodes its prompt with (default: `encode`)."""
    generating = []
    for index, config in enumerate(stages):
        if isinstance(config, SelfPlayConfig):
            _check_spin(index, config, pad_id)
            generating.append((index, config, "max_seq_len"))
        elif isinstance(config, PREFERENCE_STAGES):
            prompt_ids = _check_prompts(index, config, model, encode)
            judge_config = None
            if isinstance(config, SelfRewardDPOConfig):
                judge_config = config.reward_config or reward_config
                _check_judge_prompt_fits(index, config, model, judge_encode or encode, judge_config, prompt_ids)
                if isinstance(config, MetaRewardDPOConfig):  # the meta-judge's prompt is encoded as the judge's
                    _check_meta_judge_prompt_fits(index, config, model, judge_encode or encode, prompt_ids)
            elif isinstance(config, SelfConsistencyDPOConfig):
                _check_answer_key(index, config)
            elif config.reward_fn is not None and config.check_reward_fn_on_sample:
                _check_reward_fn(index, config)
            _check_pair_filters(index, config, judge_config)
            generating.append((index, config, "response_max_new_tokens"))
    if eos_id is None and generating:
        index, config, budget = generating[0]
        warn_missing_eos(f"stage {index} ({type(config).__name__})", f"{budget}={getattr(config, budget)}")


def _stage(index: int, config) -> str:
    return f"finetune_configs[{index}] ({type(config).__name__})"


def _check_spin(index: int, config: SelfPlayConfig, pad_id: int):
    for field in ("train_sft_dataset", "valid_sft_dataset"):
        dataset = getattr(config, field)
        if dataset is None:
            continue
        try:
            spin_items(dataset, pad_id, config.max_seq_len)
        except ValueError as error:
            raise ValueError(f"{_stage(index, config)}.{field}: {error}") from None


def _check_prompts(index: int, config, model: nn.Module, encode) -> dict[int, Tensor]:
    """Every prompt is a string whose tokens leave room for an answer; returns {prompt index: token ids}."""
    stage = _stage(index, config)
    max_seq_len = config.max_seq_len or getattr(model, "max_seq_len", None)
    if max_seq_len is None:
        raise ValueError(f"{stage}.max_seq_len is None and the model has no max_seq_len: set max_seq_len in the config")
    prompt_ids = {}
    for i in range(len(config.prompt_dataset)):
        prompt = config.prompt_dataset[i]
        if not isinstance(prompt, str):
            raise TypeError(
                f"{stage}.prompt_dataset[{i}] is a {type(prompt).__name__}; prompt datasets hold strings (each is "
                f"encoded with tokenizer_encode): pass the prompts as text"
            )
        ids = as_token_tensor(encode(prompt), f"{stage}: tokenizer_encode(prompt_dataset[{i}])")
        if len(ids) >= max_seq_len:
            raise ValueError(
                f"{stage}.prompt_dataset[{i}] ({prompt[:40]!r}...) is {len(ids)} tokens, leaving no room for an answer "
                f"under max_seq_len={max_seq_len}: shorten or drop the prompt, or raise max_seq_len"
            )
        prompt_ids[i] = ids
    return prompt_ids


def _check_judge_prompt_fits(index: int, config: SelfRewardDPOConfig, model: nn.Module, encode,
                             reward_config: RewardConfig, prompt_ids: dict[int, Tensor]):
    """The judge prompt of the longest prompt with a full-length answer, plus the judge's own answer budget."""
    limit = model_length_limit(model)
    if limit is None:
        return
    longest = max(prompt_ids, key=lambda i: len(prompt_ids[i]))
    rendered = reward_config.render(config.prompt_dataset[longest], "")
    template = len(as_token_tensor(encode(rendered), f"{_stage(index, config)}: the judge's tokenizer_encode"))
    needed = template + config.response_max_new_tokens + config.judge_max_new_tokens
    if needed > limit:
        raise ValueError(
            f"{_stage(index, config)}: the judge prompt rendered with its longest prompt (prompt_dataset[{longest}]) "
            f"is {template} tokens; with a {config.response_max_new_tokens}-token answer (response_max_new_tokens) and "
            f"{config.judge_max_new_tokens} tokens for the judgement (judge_max_new_tokens) it needs {needed} positions, "
            f"but the model's max_seq_len is {limit}. Pass a shorter RewardConfig prompt_template (the paper's is about "
            f"1,750 characters) as reward_config or self_reward_prompt_config, lower judge_max_new_tokens or "
            f"response_max_new_tokens, or use a model with a longer max_seq_len"
        )


def _check_meta_judge_prompt_fits(index: int, config: MetaRewardDPOConfig, model: nn.Module, encode,
                                  prompt_ids: dict[int, Tensor]):
    """The meta-judge prompt of the longest prompt with a full-length answer, two full-length judgements and the
    meta-judge's own answer budget."""
    if is_fully_sharded(model):
        raise NotImplementedError(f"{_stage(index, config)} does not run on a fully sharded model yet: use data "
                                  f"parallelism (one full model per process) for this stage")
    limit = model_length_limit(model)
    if limit is None:
        return
    longest = max(prompt_ids, key=lambda i: len(prompt_ids[i]))
    rendered = config.meta_judge_config.render(config.prompt_dataset[longest], "", "", "")
    template = len(as_token_tensor(encode(rendered), "meta-judge prompt"))
    needed = template + config.response_max_new_tokens + 2 * config.judge_max_new_tokens + config.meta_judge_max_new_tokens
    if needed > limit:
        raise ValueError(
            f"{_stage(index, config)}: the meta-judge prompt rendered with its longest prompt (prompt_dataset[{longest}]) "
            f"is {template} tokens; with a {config.response_max_new_tokens}-token answer (response_max_new_tokens), two "
            f"{config.judge_max_new_tokens}-token judgements (judge_max_new_tokens) and {config.meta_judge_max_new_tokens} "
            f"tokens for the verdict (meta_judge_max_new_tokens) it needs {needed} positions, but the model's max_seq_len "
            f"is {limit}. Pass a shorter MetaJudgeConfig prompt_template as meta_judge_config, lower those budgets, or use "
            f"a model with a longer max_seq_len"
        )


def _check_reward_fn(index: int, config: ExternalRewardDPOConfig):
    """One call on the first prompt with an empty answer: the function runs and returns a number, bool or None."""
    prompt = config.prompt_dataset[0]
    try:
        check_reward_value(config.reward_fn(prompt, ""), config.reward_fn, prompt, "")
    except Exception as error:
        raise (TypeError if isinstance(error, TypeError) else ValueError)(
            f"{_stage(index, config)}.reward_fn failed on a sample (prompt_dataset[0], an empty answer): {error}. "
            f"Fix the function, or pass check_reward_fn_on_sample=False if it must not be called before the stage"
        ) from error


def _check_answer_key(index: int, config: SelfConsistencyDPOConfig):
    """One call on an empty answer (a model may give one): the key must be hashable, or None for no answer, for the
    votes to be counted."""
    key = config.answer_key("")
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"{_stage(index, config)}.answer_key returned a {type(key).__name__} for the answer '': answers are "
            f"counted as votes, so the key must be hashable (a str, number or tuple), or None for no answer. Return "
            f"e.g. tuple(...) instead of a list"
        ) from None


def _check_pair_filters(index: int, config, judge_config: RewardConfig | None):
    """Filters that would keep every pair or drop every pair with this stage's judge."""
    judgements = config.num_judgements if isinstance(config, SelfRewardDPOConfig) else 1
    if isinstance(config, SelfConsistencyDPOConfig):
        scale, width = "vote shares in [0, 1]", 1.0
    elif judge_config is not None and judge_config.score_range is not None:
        low, high = judge_config.score_range
        scale, width = f"scores on the judge's score_range {tuple(judge_config.score_range)}", high - low
    else:
        scale, width = None, None
    for i, pair_filter in enumerate(config.pair_filters):
        where = f"{_stage(index, config)}.pair_filters[{i}]"
        if isinstance(pair_filter, JudgementsAgree) and judgements < 2:
            fix = "raise num_judgements to 2 or more, or drop the filter" if isinstance(config, SelfRewardDPOConfig) \
                else "drop the filter: this stage's judge scores each candidate once"
            raise ValueError(
                f"{where} (JudgementsAgree) compares the judgements of a pair's two candidates, but there is one "
                f"judgement per candidate: the best-vs-worst pair always agrees, so it keeps every pair. Fix: {fix}"
            )
        if isinstance(pair_filter, MarginAtLeast) and width is not None and pair_filter.margin > width + 1e-6:
            raise ValueError(
                f"{where} ({pair_filter!r}) asks for a margin of {pair_filter.margin}, but the stage's {scale} never "
                f"differ by more than {width:g}: it would drop every pair. Lower the margin"
            )
