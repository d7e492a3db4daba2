"""The stage configs' shared option groups: one check per group, each config's own defaults, flat keyword arguments."""

from dataclasses import fields

import pytest
from torch import nn

from self_rewarding_lm_pytorch import (
    DPOConfig,
    ExternalRewardDPOConfig,
    MetaRewardDPOConfig,
    SelfConsistencyDPOConfig,
    SelfPlayConfig,
    SelfRewardDPOConfig,
    SFTConfig,
)
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.stages.preference import pair_settings
from self_rewarding_lm_pytorch.tasks.sort_digits import SortDigitsTask
from self_rewarding_lm_pytorch.training.options import TrainingLoopOptions

SFT_DATA = SortDigitsTask(seed=1).instruction_examples(4)
PROMPTS = SortDigitsTask(seed=0).prompts(4)


def sft(**kwargs):
    return SFTConfig(train_dataset=SFT_DATA, **kwargs)


def spin(**kwargs):
    return SelfPlayConfig(train_sft_dataset=SFT_DATA, max_seq_len=24, **kwargs)


def dpo(**kwargs):
    return DPOConfig(**{"num_train_steps": 1, **kwargs})


def self_reward(**kwargs):
    return SelfRewardDPOConfig(prompt_dataset=PROMPTS, **{"num_preference_pairs": 2, "num_train_steps": 1, **kwargs})


def checker(prompt: str, response: str) -> float:
    return float(len(response))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(batch_size=0), "{}.batch_size must be >= 1, got 0"),
        (dict(grad_accum_steps=0), "{}.grad_accum_steps must be >= 1, got 0"),
        (dict(num_train_steps=0), "{}.num_train_steps must be >= 1 or None, got 0"),
        (dict(checkpoint_every=0), "{}.checkpoint_every must be >= 1 or None, got 0"),
        (dict(learning_rate=1e-8, end_learning_rate=1e-7),
         "{} needs 0 < end_learning_rate <= learning_rate, got 1e-07 and 1e-08: the rate decays from learning_rate to "
         "end_learning_rate"),
        (dict(warmup_steps=-1), "{}.warmup_steps must be >= 0, got -1"),
        (dict(weight_decay=-0.1), "{}.weight_decay must be >= 0, got -0.1"),
        (dict(max_grad_norm=0.0), "{}.max_grad_norm must be > 0 or None (no clipping), got 0.0"),
        (dict(dropout=1.0), "{}.dropout must be in [0, 1), or None (the model's own rates), got 1.0"),
    ],
)
@pytest.mark.parametrize("make", [sft, spin, dpo, self_reward])
def test_the_loop_check_refuses_a_bad_value_with_the_same_message_in_every_stage(make, bad, message):
    with pytest.raises(ValueError) as error:
        make(**bad)
    config_name = {sft: "SFTConfig", spin: "SelfPlayConfig", dpo: "DPOConfig", self_reward: "SelfRewardDPOConfig"}[make]
    assert str(error.value) == message.format(config_name)


def test_each_stage_keeps_its_own_loop_defaults():
    defaults = lambda config: (config.grad_accum_steps, config.num_epochs, config.learning_rate, config.end_learning_rate)
    assert defaults(sft()) == (2, 1, 5.5e-6, 1.1e-6)  # the paper's SFT rates
    assert defaults(spin()) == (1, 2, 5e-7, None)  # SPIN's constant rate
    assert defaults(DPOConfig(num_train_steps=1)) == (1, None, 1e-6, 1e-7)  # the paper's DPO rates
    assert defaults(self_reward()) == (1, None, 1e-6, 1e-7)  # a preference stage trains with DPO's
    for config in (sft(), spin(), dpo(), self_reward()):
        assert (config.batch_size, config.max_grad_norm, config.checkpoint_every) == (16, 1.0, None)
    # dropout as TRL: SFT leaves the model's own rates, DPO (and every preference stage) and SPIN turn it off
    dropout_default = lambda config_type: next(f.default for f in fields(config_type) if f.name == "dropout")
    assert sft().dropout is None and dropout_default(SFTConfig) is None
    for config_type in (SelfPlayConfig, DPOConfig, SelfRewardDPOConfig, MetaRewardDPOConfig, ExternalRewardDPOConfig,
                        SelfConsistencyDPOConfig):
        assert dropout_default(config_type) == 0.0, config_type.__name__
    assert spin().dpo_config().dropout == 0.0 and spin(dropout=0.1).dpo_config().dropout == 0.1


def test_every_loop_field_is_a_flat_keyword_of_every_training_stage():
    loop = [f.name for f in fields(TrainingLoopOptions)]
    assert len(loop) == 16
    for config_type in (SFTConfig, SelfPlayConfig, DPOConfig, SelfRewardDPOConfig, MetaRewardDPOConfig,
                        ExternalRewardDPOConfig, SelfConsistencyDPOConfig):
        assert set(loop) <= {f.name for f in fields(config_type)}, config_type.__name__
    assert sft(valid_every=3, batch_size=4, valid_dataset=SFT_DATA).batch_size == 4
    with pytest.raises(TypeError):
        SFTConfig(SFT_DATA, None, 16)  # beyond the two datasets, fields are keywords


def test_a_length_is_required_and_the_end_rate_may_be_left_out_only_where_it_means_constant():
    with pytest.raises(ValueError, match=r"SFTConfig has neither num_train_steps nor num_epochs.*Set num_epochs"):
        sft(num_epochs=None)
    assert sft(num_epochs=None, num_train_steps=3).num_train_steps == 3
    with pytest.raises(ValueError, match=r"SFTConfig.end_learning_rate must be a number; .* set it to learning_rate"):
        sft(end_learning_rate=None)
    assert spin(end_learning_rate=None).dpo_config().end_learning_rate == 5e-7  # constant
    with pytest.raises(ValueError, match=r"SelfPlayConfig.valid_every is set but there is no valid_sft_dataset"):
        spin(valid_every=2)


def test_pair_settings_are_every_field_but_the_dpo_training_ones():
    config = ExternalRewardDPOConfig(prompt_dataset=PROMPTS, reward_fn=checker, num_preference_pairs=2,
                                     num_train_steps=1, learning_rate=1e-5, end_learning_rate=1e-6)
    settings = pair_settings(config)
    dpo_only = {f.name for f in fields(DPOConfig)} - {"logp_reduction"}
    assert set(settings) == {f.name for f in fields(config)} - dpo_only
    assert {"prompt_dataset", "reward_fn", "num_preference_pairs", "temperature", "logp_reduction"} <= set(settings)
    assert not {"learning_rate", "num_train_steps", "beta", "checkpoint_every", "early_stopper"} & set(settings)
    assert settings["num_preference_pairs"] == 2 and settings["logp_reduction"] == "sum"
    # the same pairs from other DPO training settings; other pairs from another sampling temperature
    retrained = ExternalRewardDPOConfig(prompt_dataset=PROMPTS, reward_fn=checker, num_preference_pairs=2,
                                        num_train_steps=7, beta=0.3)
    assert pair_settings(retrained) == settings
    assert pair_settings(ExternalRewardDPOConfig(prompt_dataset=PROMPTS, reward_fn=checker, num_preference_pairs=2,
                                                 num_train_steps=1, temperature=1.0)) != settings
    with pytest.raises(TypeError, match="pair_settings takes a preference stage config .* got a SFTConfig"):
        pair_settings(sft())
    with pytest.raises(TypeError):
        pair_settings(PairGenerationConfig(num_preference_pairs=2))


def test_reward_model_batch_size_is_32_for_a_reward_model_and_refused_with_a_reward_fn():
    common = dict(prompt_dataset=PROMPTS, num_preference_pairs=2, num_train_steps=1)
    assert ExternalRewardDPOConfig(reward_model=nn.Linear(2, 1), **common).reward_model_batch_size == 32
    assert ExternalRewardDPOConfig(reward_model=nn.Linear(2, 1), reward_model_batch_size=4, **common).reward_model_batch_size == 4
    assert ExternalRewardDPOConfig(reward_fn=checker, **common).reward_model_batch_size is None
    with pytest.raises(ValueError, match="reward_model_batch_size applies to reward_model only: leave it out"):
        ExternalRewardDPOConfig(reward_fn=checker, reward_model_batch_size=32, **common)
    with pytest.raises(ValueError, match=r"ExternalRewardDPOConfig.reward_model_batch_size must be >= 1, got 0"):
        ExternalRewardDPOConfig(reward_model=nn.Linear(2, 1), reward_model_batch_size=0, **common)


def test_a_preference_stage_runs_each_group_check_once_from_its_own_post_init():
    with pytest.raises(ValueError, match=r"MetaRewardDPOConfig.num_candidate_responses must be >= 2"):
        MetaRewardDPOConfig(prompt_dataset=PROMPTS, num_preference_pairs=2, num_train_steps=1, num_candidate_responses=1)
    with pytest.raises(ValueError, match=r"SelfConsistencyDPOConfig.early_stop_every is set but there is no early_stopper"):
        SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, num_preference_pairs=2, num_train_steps=1, early_stop_every=2)
    with pytest.raises(ValueError, match=r"SelfRewardDPOConfig.judge_batch_size must be >= 1, got 0"):
        self_reward(judge_batch_size=0)
    config = self_reward(loss_type="ipo", pair_filters=[])
    assert config.logp_reduction == "mean" and config.pair_filters == ()  # both groups resolved their fields
    assert not hasattr(MetaRewardDPOConfig(prompt_dataset=PROMPTS, num_preference_pairs=2, num_train_steps=1),
                       "dissent_judgements")
