"""The orchestrator: walks a list of stage configs in order, one trainer per stage, a checkpoint after each.

    SelfRewardingTrainer(model, finetune_configs=[SFTConfig(...), SelfPlayConfig(...), SelfRewardDPOConfig(...)],
                         tokenizer_encode=..., tokenizer_decode=...)()

Each stage is built when it starts (its reference is the model at that moment), dispatched on the config's type
through `STAGE_RUNNERS`. Stage i writes `stage-{i:02d}-{kind}.pt` and, for preference stages, its own pairs folder
`stage-{i:02d}-{kind}.pairs/` (stages never share files). Running the same script again resumes: finished stages
are skipped (their checkpoint is loaded), an interrupted stage's pair generation continues from the pairs on disk,
then its training starts over. `trainer(overwrite_checkpoints=True)` or the environment variable
SELF_REWARDING_CLEAR_CHECKPOINTS=1 clears this run's files first; that is never the default.

`log_with="tensorboard"` (any Accelerate tracker name, or several) sends every stage's numbers to that tracker
under the stage's name, at a global step that keeps growing across stages (storage/tracking.py).
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from torch import Tensor, nn

from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from self_rewarding_lm_pytorch.training.dpo import DPOConfig, DPOTrainer
from self_rewarding_lm_pytorch.storage.fingerprint import changed_parts, config_fingerprint, describe, short, tokenizer_digest
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, check_sampler_processes, make_sampler
from self_rewarding_lm_pytorch.storage.integrity import content_digest, remove_stale_temp_files
from self_rewarding_lm_pytorch.judging.judges import Judge, RewardFnJudge, RewardModelJudge, SelfJudge
from self_rewarding_lm_pytorch.pairs.meta_reward import generate_meta_reward_pairs
from self_rewarding_lm_pytorch.judging.meta_judge import MetaJudge
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset
from self_rewarding_lm_pytorch.models.contract import check_special_ids
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.loop import generate_preference_pairs
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.judging.self_consistency import SelfConsistencyJudge
from self_rewarding_lm_pytorch.training.sft import SFTConfig, SFTTrainer
from self_rewarding_lm_pytorch.models.sharding import (
    check_supported_sharding,
    full_state_dict,
    local_weights,
    max_over_ranks,
    place_on_device,
    same_on_every_rank,
)
from self_rewarding_lm_pytorch.training.spin import SelfPlayConfig, SPINTrainer
from self_rewarding_lm_pytorch.stages.checks import check_stages
from self_rewarding_lm_pytorch.stages.configs import (
    ExternalRewardDPOConfig,
    FinetuneConfig,
    MetaRewardDPOConfig,
    SelfConsistencyDPOConfig,
    SelfRewardDPOConfig,
    create_default_paper_config,
)
from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger, last_logged

CLEAR_CHECKPOINTS_ENV = "SELF_REWARDING_CLEAR_CHECKPOINTS"
# settings that do not change a stage's result: editing them keeps the stage's files usable
NOT_RESULT_FIELDS = ("checkpoint_every",)
# a preference stage's pairs do not depend on its DPO settings (but its stored reference log-probs use logp_reduction)
DPO_ONLY_FIELDS = {f.name for f in fields(DPOConfig)} - {f.name for f in fields(PairGenerationConfig)} - {"logp_reduction"}


class SelfRewardingTrainer:
    """Run `finetune_configs` (a list of stage configs, or a dict of `create_default_paper_config` arguments).

    `tokenizer_encode(str) -> Tensor` and `tokenizer_decode(Tensor) -> str` turn prompts into token ids and
    generated tokens back into text (for the judge and the pair records). `evaluate(model) -> dict`, if given,
    runs after every stage on every process; its numbers join that stage's summary and the trackers.
    `judge_tokenizer_encode` encodes the self-judge's prompts (default: `tokenizer_encode`), e.g. the chat
    template with a judge's own system prompt. `log_with` (with `project_name`, under `logging_dir`, default
    `checkpoints_folder/logs`) names Accelerate trackers; they are initialised and closed by `train()`.
    `collective_timeout_s`: how long a process waits for the others in a collective before failing with an
    error (when the trainer builds the Accelerator; with your own, pass `InitProcessGroupKwargs(timeout=...)` to it).
    `generation_backend`: what generates candidates, judgements and SPIN's answers: "library" (the default, the
    library's KV-cached sampler), or "vllm" / a `VLLMConfig(...)` (engine options) for an `HFCausalLM` policy, one
    process (generation/vllm_backend.py). It is part of each generating stage's fingerprint: its draws differ.
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
        collective_timeout_s: float = 1800.0,
        accelerator: Accelerator | None = None,
        seed: int = 0,
        evaluate: Callable[[nn.Module], dict] | None = None,
        judge_tokenizer_encode: Callable[[str], Tensor] | None = None,
        log_with: str | list | None = None,
        project_name: str = "self-rewarding",
        logging_dir: str | Path | None = None,
        tracker_init_kwargs: dict | None = None,
        generation_backend="library",
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
        if judge_tokenizer_encode is not None and not callable(judge_tokenizer_encode):
            raise TypeError("judge_tokenizer_encode must be a callable (str -> Tensor) or None")
        if accelerator is not None and log_with is not None:
            raise ValueError("log_with is given with an accelerator: build that Accelerator with log_with=... instead")

        check_special_ids(model, pad_id, eos_id, "SelfRewardingTrainer")

        self.model = model
        self.stages = list(finetune_configs)
        self.encode, self.decode = tokenizer_encode, tokenizer_decode
        self.judge_encode = judge_tokenizer_encode or tokenizer_encode
        self.reward_config = self_reward_prompt_config or RewardConfig()
        # every stage's inputs against the model and tokenizer, now rather than when the stage starts
        check_stages(self.stages, model, encode=tokenizer_encode, reward_config=self.reward_config,
                     pad_id=pad_id, eos_id=eos_id, judge_encode=self.judge_encode)
        self.pad_id, self.eos_id = pad_id, eos_id
        self.folder = Path(checkpoints_folder)
        if accelerator is None:
            logging_dir = Path(logging_dir) if logging_dir is not None else self.folder / "logs"
            tracking = dict(log_with=log_with, project_dir=logging_dir) if log_with is not None else {}
            # a process that dies or hangs must not keep the others waiting forever in a collective
            handlers = list((accelerate_kwargs or {}).get("kwargs_handlers", []))
            if not any(isinstance(h, InitProcessGroupKwargs) for h in handlers):
                handlers.append(InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout_s)))
            accelerator = Accelerator(**tracking, **{**(accelerate_kwargs or {}), "kwargs_handlers": handlers})
        self.accelerator = accelerator
        check_supported_sharding(self.accelerator, "SelfRewardingTrainer")
        # one sampler for every generating stage (one vLLM engine, loaded with the current weights at each use)
        self.sampler = make_sampler(generation_backend, model, where="SelfRewardingTrainer.generation_backend")
        check_sampler_processes(self.sampler, self.accelerator.num_processes, "SelfRewardingTrainer.generation_backend")
        self.log_with, self.project_name, self.tracker_init_kwargs = log_with, project_name, tracker_init_kwargs or {}
        self.next_step = 0  # the global step where the next stage starts logging
        self.seed = seed
        self.evaluate = evaluate
        self.summaries: list[dict] = []
        self._fingerprints: dict[int, dict] = {}

    # files of stage i
    def stage_name(self, index: int) -> str:
        return f"stage-{index:02d}-{STAGE_KINDS[type(self.stages[index])]}"

    def checkpoint_path(self, index: int) -> Path:
        return self.folder / f"{self.stage_name(index)}.pt"

    def pairs_folder(self, index: int) -> Path:
        return self.folder / f"{self.stage_name(index)}.pairs"

    def fingerprint(self, index: int) -> dict[str, str]:
        """What identifies stage i's result (storage/fingerprint.py): its settings, callables and datasets, the trainer's
        ids, seed, judge prompt and tokenizer, and the fingerprint of stage i - 1 (stage 0: the initial weights),
        so a change anywhere upstream is a different plan. Computed once per trainer."""
        if index not in self._fingerprints:
            config = self.stages[index]
            parts = config_fingerprint(config, skip=NOT_RESULT_FIELDS)
            parts.update(
                stage=self.stage_name(index), pad_id=str(self.pad_id), eos_id=str(self.eos_id), seed=str(self.seed),
                tokenizer=tokenizer_digest(self.encode, self.decode),
                upstream=short(describe(self.fingerprint(index - 1))) if index else
                same_on_every_rank(content_digest(local_weights(self.model))[:16], self.model),
            )
            if isinstance(config, SelfRewardDPOConfig) and config.reward_config is None:
                parts["reward_config"] = short(describe(self.reward_config))
            if isinstance(config, SelfRewardDPOConfig) and self.judge_encode is not self.encode:
                parts["judge_tokenizer"] = tokenizer_digest(self.judge_encode, self.decode)
            if not isinstance(config, SFTConfig) and not isinstance(self.sampler, LibrarySampler):
                parts["generation_backend"] = short(describe(self.sampler))  # not for the default: old runs resume
            self._fingerprints[index] = parts
        return self._fingerprints[index]

    def pairs_fingerprint(self, index: int) -> dict[str, str]:
        """The parts of stage i's fingerprint that make its pairs (its DPO settings do not)."""
        return {k: v for k, v in self.fingerprint(index).items() if k not in DPO_ONLY_FIELDS}

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
            saved = read_checkpoint(path, way_out=f"delete it to run stage {index} again")
            changed = changed_parts(saved.get("fingerprint"), self.fingerprint(index))
            if changed:
                raise ValueError(
                    f"{path} was written by a different plan: stage {index} changed ({', '.join(changed)}). "
                    f"Use another checkpoints_folder, or clear it with trainer(overwrite_checkpoints=True) or "
                    f"{CLEAR_CHECKPOINTS_ENV}=1"
                )
            done += 1
        return done

    def train(self, overwrite_checkpoints: bool = False) -> list[dict]:
        """Run every stage not already finished; returns one summary dict per stage."""
        if self.log_with is not None:
            self.accelerator.init_trackers(self.project_name, config=dict(num_stages=len(self.stages), seed=self.seed),
                                           init_kwargs=self.tracker_init_kwargs)
        try:
            return self._train(overwrite_checkpoints)
        finally:
            if self.log_with is not None:
                for tracker in self.accelerator.trackers:  # not end_training(): it would end the process group too
                    tracker.finish()
                self.accelerator.trackers = []

    def _train(self, overwrite_checkpoints: bool) -> list[dict]:
        if overwrite_checkpoints or os.environ.get(CLEAR_CHECKPOINTS_ENV, "") not in ("", "0"):
            self.clear_checkpoints()
        if self.accelerator.is_main_process:
            remove_stale_temp_files(self.folder)  # what writers killed mid-write left behind
        for index in range(len(self.stages)):
            self.fingerprint(index)  # now: stage 0's includes the weights the run starts from

        done = self.finished_stages()
        self.summaries = []
        for index in range(done):
            extras = load_checkpoint(self.model, self.checkpoint_path(index)) if index == done - 1 else \
                read_checkpoint(self.checkpoint_path(index))
            self.summaries.append(dict(extras.get("summary", {}), resumed=True, checkpoint=str(self.checkpoint_path(index))))
            self.next_step = extras.get("next_step", 0)
        if done:
            self.print(f"resuming after stage {done - 1}: loaded {self.checkpoint_path(done - 1)}")
        place_on_device(self.accelerator, self.model)

        for index in range(done, len(self.stages)):
            config = self.stages[index]
            # a seed per stage: a resumed run makes the same draws as an uninterrupted one
            set_seed(self.seed + index)
            self.print(f"stage {index}: {type(config).__name__}")

            summary = dict(stage=index, kind=STAGE_KINDS[type(config)])
            logger = MetricsLogger(self.accelerator, self.stage_name(index), start_step=self.next_step)
            try:
                summary.update(STAGE_RUNNERS[type(config)](self, index, config, logger))
            except RuntimeError as error:
                if self.accelerator.num_processes > 1 and is_lost_peer(error):
                    error.add_note(
                        f"stage {index}: process {self.accelerator.process_index} of {self.accelerator.num_processes} "
                        f"lost the others (one died, or hung past the collective timeout): see the other processes' "
                        f"logs. Rerun to resume from the last saved state"
                    )
                raise
            if self.evaluate is not None:
                numbers = self.evaluate(self.model)
                summary.update(numbers)
                logger.log({f"evaluate/{k}": v for k, v in numbers.items()})  # at the stage's last step
            self.next_step = logger.last_step + 1

            check_finite_weights(self.model, f"stage {index} ({self.stage_name(index)})")
            self.save_pretrained(index)  # before the checkpoint: the .pt file is what marks the stage finished
            save_checkpoint(
                self.accelerator, self.model, self.checkpoint_path(index),
                stage_index=index, fingerprint=self.fingerprint(index), summary=summary, next_step=self.next_step,
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

def run_sft(trainer: SelfRewardingTrainer, index: int, config: SFTConfig, logger: MetricsLogger) -> dict:
    history = SFTTrainer(trainer.model, config, pad_id=trainer.pad_id, accelerator=trainer.accelerator,
                         checkpoint_folder=trainer.folder / f"{trainer.stage_name(index)}.steps", logger=logger).train()
    return last_logged(history, ("loss", "valid_loss"))


def run_spin(trainer: SelfRewardingTrainer, index: int, config: SelfPlayConfig, logger: MetricsLogger) -> dict:
    spin = SPINTrainer(
        trainer.model, config, pad_id=trainer.pad_id, eos_id=trainer.eos_id, accelerator=trainer.accelerator,
        checkpoint_folder=trainer.folder / f"{trainer.stage_name(index)}.iterations", logger=logger,
        generation_backend=trainer.sampler,
    )
    return last_logged(spin.train(), ("loss", "rewards/accuracies", "rewards/margins"))


def make_judge(trainer: SelfRewardingTrainer, config) -> Judge:
    """Who scores a preference stage's candidates: the model with its judge prompt, its answers' votes, or an
    external reward."""
    if isinstance(config, SelfRewardDPOConfig):
        return SelfJudge(
            trainer.model, config.reward_config or trainer.reward_config,
            tokenizer_encode=trainer.judge_encode, tokenizer_decode=trainer.decode,
            num_judgements=config.num_judgements, max_new_tokens=config.judge_max_new_tokens,
            temperature=config.judge_temperature, top_p=config.judge_top_p,
            pad_id=trainer.pad_id, eos_id=trainer.eos_id, batch_size=config.judge_batch_size, sampler=trainer.sampler,
        )
    if isinstance(config, SelfConsistencyDPOConfig):
        return SelfConsistencyJudge(config.answer_key)
    if config.reward_fn is not None:
        return RewardFnJudge(config.reward_fn)
    return RewardModelJudge(config.reward_model, pad_id=trainer.pad_id, batch_size=config.reward_model_batch_size)


def run_preference_dpo(trainer: SelfRewardingTrainer, index: int, config, logger: MetricsLogger) -> dict:
    judge = make_judge(trainer, config)

    stats = generate_preference_pairs(
        trainer.model, config.prompt_dataset, judge, config,
        folder=trainer.pairs_folder(index),
        tokenizer_encode=trainer.encode, tokenizer_decode=trainer.decode,
        accelerator=trainer.accelerator, pad_id=trainer.pad_id, eos_id=trainer.eos_id,
        logp_reduction=config.logp_reduction, seed=trainer.seed + index, fingerprint=trainer.pairs_fingerprint(index),
        logger=logger, sampler=trainer.sampler,
    )
    summary = train_on_stored_pairs(trainer, index, config, logger)
    summary.update(judge_parse_rate=stats.parse_rate, tie_rate=stats.tie_rate)
    summary.update({k: v for k, v in stats.summary().items() if k.startswith(("judge_verifier", "pairs_chosen", "pairs_filtered"))})
    return summary


def run_meta_reward_dpo(trainer: SelfRewardingTrainer, index: int, config: MetaRewardDPOConfig,
                        logger: MetricsLogger) -> dict:
    # the judge comes from the one judge factory above; pairs/meta_reward.py adds the meta-judge and runs the stage
    return run_meta_reward_stage(trainer, index, config, logger, judge=make_judge(trainer, config))


def train_on_stored_pairs(trainer, index: int, config: DPOConfig, logger: MetricsLogger) -> dict:
    """The training half of every preference stage of a `SelfRewardingTrainer` plan, once its pairs are on disk:
    frees the generation backend, runs DPO on stage `index`'s pairs folder (its steps resumable under
    `<stage>.steps`), and returns the last logged loss numbers with the number of pairs."""
    trainer.sampler.release()  # generation is over until the next generating stage: a backend may free its memory
    pairs = DPODataset(trainer.pairs_folder(index))
    history = DPOTrainer(
        trainer.model, pairs, config, accelerator=trainer.accelerator,
        checkpoint_folder=trainer.folder / f"{trainer.stage_name(index)}.steps", checkpoint_prefix="dpo", logger=logger,
    ).train()
    return dict(last_logged(history, ("loss", "rewards/accuracies", "rewards/margins")), pairs=len(pairs))


def run_meta_reward_stage(trainer, index: int, config: MetaRewardDPOConfig, logger: MetricsLogger, *,
                          judge: SelfJudge) -> dict:
    """The stage, for the orchestrator (`trainer`, whose runner table passes the stage's `judge`): pairs of both
    kinds, then one DPO run on all of them; returns the stage's summary numbers."""
    meta_judge = MetaJudge(
        trainer.model, config.meta_judge_config, tokenizer_encode=trainer.judge_encode, tokenizer_decode=trainer.decode,
        max_new_tokens=config.meta_judge_max_new_tokens, temperature=config.meta_judge_temperature,
        top_p=config.meta_judge_top_p, pad_id=trainer.pad_id, eos_id=trainer.eos_id, batch_size=config.meta_judge_batch_size,
        sampler=trainer.sampler,
    )
    stats, meta_stats = generate_meta_reward_pairs(
        trainer.model, config, judge, meta_judge, folder=trainer.pairs_folder(index),
        tokenizer_encode=trainer.encode, tokenizer_decode=trainer.decode, judge_encode=trainer.judge_encode,
        accelerator=trainer.accelerator, pad_id=trainer.pad_id, eos_id=trainer.eos_id, seed=trainer.seed + index,
        fingerprint=trainer.pairs_fingerprint(index), logger=logger, sampler=trainer.sampler,
    )
    summary = train_on_stored_pairs(trainer, index, config, logger)
    summary.update(actor_pairs=stats.pairs_made, judge_pairs=meta_stats.pairs_made,
                   judge_parse_rate=stats.parse_rate, tie_rate=stats.tie_rate, meta_parse_rate=meta_stats.parse_rate,
                   meta_first_position_rate=meta_stats.first_position_rate)
    summary.update({k: v for k, v in stats.summary().items() if k.startswith(("judge_verifier", "pairs_chosen", "pairs_filtered"))})
    summary.update({f"judge_pairs_dropped/{k.split('/', 1)[1]}": v for k, v in meta_stats.summary().items()
                    if k.startswith("pairs_dropped/")})
    if meta_stats.pairs_made and (meta_stats.pairs_verified_better or meta_stats.pairs_verified_worse):
        summary["judge_pairs_chosen_verified_better"] = meta_stats.pairs_verified_better / meta_stats.pairs_made
        summary["judge_pairs_chosen_verified_worse"] = meta_stats.pairs_verified_worse / meta_stats.pairs_made
    return summary


def is_lost_peer(error: Exception) -> bool:
    """Whether a collective failed because another process is gone or silent (gloo / NCCL wording)."""
    text = str(error).lower()
    return any(word in text for word in ("connection reset", "connection closed", "timed out", "timeout", "broken pipe", "peer"))


def check_finite_weights(model: nn.Module, what: str):
    """A stage whose weights hold NaN or inf is never saved as finished (a later run would build on it)."""
    bad = [name for name, p in local_weights(model).items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if max_over_ranks(len(bad), model):  # sharded: every rank sees its own shards, and all must raise together
        raise FloatingPointError(
            f"{what} ended with non-finite weights in {len(bad)} tensors ({', '.join(bad[:3])}...); it is not saved as "
            f"finished. Lower the learning rate, check the data, or set skip_nonfinite_steps=True in its config"
        )


STAGE_RUNNERS = {
    SFTConfig: run_sft,
    SelfPlayConfig: run_spin,
    SelfRewardDPOConfig: run_preference_dpo,
    MetaRewardDPOConfig: run_meta_reward_dpo,
    ExternalRewardDPOConfig: run_preference_dpo,
    SelfConsistencyDPOConfig: run_preference_dpo,
}

STAGE_KINDS = {
    SFTConfig: "sft",
    SelfPlayConfig: "spin",
    SelfRewardDPOConfig: "self-reward-dpo",
    MetaRewardDPOConfig: "meta-reward-dpo",
    ExternalRewardDPOConfig: "external-reward-dpo",
    SelfConsistencyDPOConfig: "self-consistency-dpo",
}
