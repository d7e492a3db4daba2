"""The paper's plan as stage configs: SFT, then two self-rewarding iterations (Yuan et al. 2024, section 3)."""

from __future__ import annotations

from torch.utils.data import Dataset

from self_rewarding_lm_pytorch.stages.self_reward import SelfRewardDPOConfig
from self_rewarding_lm_pytorch.training.sft import SFTConfig


def create_default_paper_config(
    *,
    train_sft_dataset: Dataset,
    self_reward_prompt_dataset: Dataset | tuple[Dataset, Dataset],
    valid_sft_dataset: Dataset | None = None,
    num_generated_preference_pairs: tuple[int, int] = (3964, 6942),
    dpo_num_train_steps: int | None = None,
    dpo_num_epochs: int = 1,
    sft_config: dict | None = None,
    self_reward_config: dict | None = None,
    early_stopper=None,
) -> list:
    """The paper's plan (Yuan et al. 2024, section 3): SFT on the seed data (M1), then two self-rewarding
    iterations (M2 with 3,964 pairs, M3 with 6,942), each judging with the 0-5 additive prompt.

    `self_reward_prompt_dataset` is one dataset (both iterations draw from it; each uses its own prompt order)
    or a pair of datasets, one per iteration. DPO runs `dpo_num_train_steps`, or `dpo_num_epochs` over the
    pairs when no step count is given. Extra settings go in `sft_config` / `self_reward_config`."""
    if len(num_generated_preference_pairs) != 2:
        raise ValueError("num_generated_preference_pairs holds the pair counts of the two iterations, e.g. (3964, 6942)")
    prompt_datasets = (
        self_reward_prompt_dataset if isinstance(self_reward_prompt_dataset, tuple) else (self_reward_prompt_dataset,) * 2
    )
    dpo_length = dict(num_train_steps=dpo_num_train_steps) if dpo_num_train_steps else dict(num_epochs=dpo_num_epochs)
    stages: list = [
        SFTConfig(train_dataset=train_sft_dataset, valid_dataset=valid_sft_dataset, **(sft_config or {}))
    ]
    for num_pairs, prompts in zip(num_generated_preference_pairs, prompt_datasets):
        stages.append(
            SelfRewardDPOConfig(
                prompt_dataset=prompts,
                num_preference_pairs=num_pairs,
                early_stopper=early_stopper,
                **{**dpo_length, **(self_reward_config or {})},
            )
        )
    return stages
