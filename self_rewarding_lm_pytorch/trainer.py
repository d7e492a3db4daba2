"""The orchestrator: walks a list of stage configs in order, one trainer per stage, a checkpoint after each.

    SelfRewardingTrainer(model, finetune_configs=[SFTConfig(...), SelfPlayConfig(...), SelfRewardDPOConfig(...)],
                         tokenizer_encode=..., tokenizer_decode=...)()

Each stage is built when it starts (its reference is the model at that moment), dispatched on the config's type
through `STAGE_RUNNERS`. Stage i writes `stage-{i:02d}-{kind}.pt` and, for preference stages, its own pairs folder
`stage-{i:02d}-{kind}.pairs/` (stages never share files). Running the same script again resumes: finished stages
are skipped (their checkpoint is loaded), an interrupted stage's pair generation continues from the pairs on disk,
then its training starts over. `trainer(overwrite_checkpoints=True)` or the environment variable
SELF_REWARDING_CLEAR_CHECKPOINTS=1 clears this run's files first; that is never the default.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn

from self_rewarding_lm_pytorch.checkpoint import load_checkpoint, save_checkpoint
from self_rewarding_lm_pytorch.dpo import DPOTrainer
from self_rewarding_lm_pytorch.judges import RewardFnJudge, RewardModelJudge, SelfJudge
from self_rewarding_lm_pytorch.pair_generation import generate_preference_pairs
from self_rewarding_lm_pytorch.preference_data import DPODataset
from self_rewarding_lm_pytorch.reward import RewardConfig
from self_rewarding_lm_pytorch.sft import SFTConfig, SFTTrainer
from self_rewarding_lm_pytorch.sharding import check_supported_sharding, full_state_dict
from self_rewarding_lm_pytorch.spin import SelfPlayConfig, SPINTrainer
from self_rewarding_lm_pytorch.stages import (
    ExternalRewardDPOConfig,
    FinetuneConfig,
    SelfRewardDPOConfig,
    create_default_paper_config,
)

CLEAR_CHECKPOINTS_ENV = "SELF_REWARDING_CLEAR_CHECKPOINTS"


class SelfRewardingTrainer:
    """Run `finetune_configs` (a list of stage configs, or a dict of `create_default_paper_config` arguments).

    `tokenizer_encode(str) -> Tensor` and `tokenizer_decode(Tensor) -> str` turn prompts into token ids and
    generated tokens back into text (for the judge and the pair records). `evaluate(model) -> dict`, if given,
    runs after every stage on every process; its numbers join that stage's summary.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        finetune_configs: list[FinetuneConfig] | dict,
        tokenizer_encode: Callable[[str], Tensor],
        tokenizer_decode: Callable[[Tensor], str],
        self_reward_prompt_config: RewardConfig | None = None,
        pad_id: int = -1,
        eos_id: int | None = None,
        checkpoints_folder: str | Path = "./checkpoints",
        accelerate_kwargs: dict | None = None,
        accelerator: Accelerator | None = None,
        seed: int = 0,
        evaluate: Callable[[nn.Module], dict] | None = None,
    ):
        if isinstance(finetune_configs, dict):
            finetune_configs = create_default_paper_config(**finetune_configs)
        if not finetune_configs:
            raise ValueError("finetune_configs is empty: give at least one stage config")
        for index, config in enumerate(finetune_configs):
            if type(config) not in STAGE_RUNNERS:
                known = ", ".join(cls.__name__ for cls in STAGE_RUNNERS)
                raise TypeError(f"finetune_configs[{index}] is a {type(config).__name__}; stages are one of {known}")
        if not callable(tokenizer_encode) or not callable(tokenizer_decode):
            raise TypeError("tokenizer_encode and tokenizer_decode must be callables (str -> Tensor, Tensor -> str)")

        self.model = model
        self.stages = list(finetune_configs)
        self.encode, self.decode = tokenizer_encode, tokenizer_decode
        self.reward_config = self_reward_prompt_config or RewardConfig()
        self.pad_id, self.eos_id = pad_id, eos_id
        self.folder = Path(checkpoints_folder)
        self.accelerator = accelerator or Accelerator(**(accelerate_kwargs or {}))
        check_supported_sharding(self.accelerator, "SelfRewardingTrainer")
        self.seed = seed
        self.evaluate = evaluate
        self.summaries: list[dict] = []

    # files of stage i
    def stage_name(self, index: int) -> str:
        return f"stage-{index:02d}-{STAGE_KINDS[type(self.stages[index])]}"

    def checkpoint_path(self, index: int) -> Path:
        return self.folder / f"{self.stage_name(index)}.pt"

    def pairs_folder(self, index: int) -> Path:
        return self.folder / f"{self.stage_name(index)}.pairs"

    def fingerprint(self, index: int) -> str:
        """What identifies stage i of this plan in its checkpoint: kind, position and plain settings."""
        config = self.stages[index]
        plain = {
            f.name: getattr(config, f.name)
            for f in fields(config)
            if isinstance(getattr(config, f.name), (int, float, str, bool, type(None)))
        }
        return f"{self.stage_name(index)} {sorted(plain.items())}"

    def clear_checkpoints(self):
        """Delete this trainer's stage files (only `stage-*` entries: the folder may hold other things)."""
        if self.accelerator.is_main_process and self.folder.is_dir():
            for entry in self.folder.glob("stage-*"):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        self.accelerator.wait_for_everyone()

    def finished_stages(self) -> int:
        """How many leading stages have a checkpoint of this very plan; a checkpoint of another plan is an error."""
        done = 0
        for index in range(len(self.stages)):
            path = self.checkpoint_path(index)
            if not path.is_file():
                break
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("fingerprint") != self.fingerprint(index):
                raise ValueError(
                    f"{path} was written by a different plan (its settings differ from stage {index}'s). "
                    f"Use another checkpoints_folder, or clear it with trainer(overwrite_checkpoints=True) or "
                    f"{CLEAR_CHECKPOINTS_ENV}=1"
                )
            done += 1
        return done

    def train(self, overwrite_checkpoints: bool = False) -> list[dict]:
        """Run every stage not already finished; returns one summary dict per stage."""
        if overwrite_checkpoints or os.environ.get(CLEAR_CHECKPOINTS_ENV, "") not in ("", "0"):
            self.clear_checkpoints()

        done = self.finished_stages()
        self.summaries = []
        for index in range(done):
            extras = load_checkpoint(self.model, self.checkpoint_path(index)) if index == done - 1 else \
                torch.load(self.checkpoint_path(index), map_location="cpu", weights_only=True)
            self.summaries.append(dict(extras.get("summary", {}), resumed=True, checkpoint=str(self.checkpoint_path(index))))
        if done:
            self.print(f"resuming after stage {done - 1}: loaded {self.checkpoint_path(done - 1)}")

        for index in range(done, len(self.stages)):
            config = self.stages[index]
            # a seed per stage: a resumed run makes the same draws as an uninterrupted one
            set_seed(self.seed + index)
            self.print(f"stage {index}: {type(config).__name__}")

            summary = dict(stage=index, kind=STAGE_KINDS[type(config)])
            summary.update(STAGE_RUNNERS[type(config)](self, index, config))
            if self.evaluate is not None:
                summary.update(self.evaluate(self.model))

            self.save_pretrained(index)  # before the checkpoint: the .pt file is what marks the stage finished
            save_checkpoint(
                self.accelerator, self.model, self.checkpoint_path(index),
                stage_index=index, fingerprint=self.fingerprint(index), summary=summary,
            )
            summary["checkpoint"] = str(self.checkpoint_path(index))
            self.summaries.append(summary)
            # drop the stage's prepared wrappers and optimizer before the next stage builds its own
            self.accelerator.free_memory()

        return self.summaries

    __call__ = train

    def save_pretrained(self, index: int):
        """Models with their own format (the HF adapter) are also saved in it, to `stage-{i:02d}-{kind}.hf/`."""
        if not hasattr(self.model, "save_pretrained"):
            return
        state_dict = full_state_dict(self.accelerator, self.model)  # collective: every process takes part
        if self.accelerator.is_main_process:
            self.model.save_pretrained(self.folder / f"{self.stage_name(index)}.hf", state_dict=state_dict)
        self.accelerator.wait_for_everyone()

    def print(self, *args):
        self.accelerator.print(*args)


# stage runners: build the stage's trainer on the (unwrapped) model, run it, return numbers for the summary

def run_sft(trainer: SelfRewardingTrainer, index: int, config: SFTConfig) -> dict:
    history = SFTTrainer(trainer.model, config, pad_id=trainer.pad_id, accelerator=trainer.accelerator).train()
    return _last_numbers(history, ("loss", "valid_loss"))


def run_spin(trainer: SelfRewardingTrainer, index: int, config: SelfPlayConfig) -> dict:
    spin = SPINTrainer(
        trainer.model, config, pad_id=trainer.pad_id, eos_id=trainer.eos_id, accelerator=trainer.accelerator,
        checkpoint_folder=trainer.folder / f"{trainer.stage_name(index)}.iterations",
    )
    return _last_numbers(spin.train(), ("loss", "rewards/accuracies", "rewards/margins"))


def run_preference_dpo(trainer: SelfRewardingTrainer, index: int, config) -> dict:
    if isinstance(config, SelfRewardDPOConfig):
        judge = SelfJudge(
            trainer.model, config.reward_config or trainer.reward_config,
            tokenizer_encode=trainer.encode, tokenizer_decode=trainer.decode,
            num_judgements=config.num_judgements, max_new_tokens=config.judge_max_new_tokens,
            temperature=config.judge_temperature, top_p=config.judge_top_p,
            pad_id=trainer.pad_id, eos_id=trainer.eos_id, batch_size=config.judge_batch_size,
        )
    elif config.reward_fn is not None:
        judge = RewardFnJudge(config.reward_fn)
    else:
        judge = RewardModelJudge(config.reward_model, pad_id=trainer.pad_id, batch_size=config.reward_model_batch_size)

    stats = generate_preference_pairs(
        trainer.model, config.prompt_dataset, judge, config,
        folder=trainer.pairs_folder(index),
        tokenizer_encode=trainer.encode, tokenizer_decode=trainer.decode,
        accelerator=trainer.accelerator, pad_id=trainer.pad_id, eos_id=trainer.eos_id,
        logp_reduction=config.logp_reduction, seed=trainer.seed + index,
    )
    pairs = DPODataset(trainer.pairs_folder(index))
    history = DPOTrainer(
        trainer.model, pairs, config, accelerator=trainer.accelerator,
        checkpoint_folder=trainer.folder / f"{trainer.stage_name(index)}.steps", checkpoint_prefix="dpo",
    ).train()
    summary = _last_numbers(history, ("loss", "rewards/accuracies", "rewards/margins"))
    summary.update(pairs=len(pairs), judge_parse_rate=stats.parse_rate, tie_rate=stats.tie_rate)
    summary.update({k: v for k, v in stats.summary().items() if k.startswith(("judge_verifier", "pairs_chosen"))})
    return summary


def _last_numbers(history: list[dict], keys: tuple[str, ...]) -> dict:
    last = {}
    for row in history:
        last.update({k: row[k] for k in keys if k in row})
    return last


STAGE_RUNNERS = {
    SFTConfig: run_sft,
    SelfPlayConfig: run_spin,
    SelfRewardDPOConfig: run_preference_dpo,
    ExternalRewardDPOConfig: run_preference_dpo,
}

STAGE_KINDS = {
    SFTConfig: "sft",
    SelfPlayConfig: "spin",
    SelfRewardDPOConfig: "self-reward-dpo",
    ExternalRewardDPOConfig: "external-reward-dpo",
}
