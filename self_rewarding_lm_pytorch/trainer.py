"""The orchestrator: walks a list of stage configs in order, one trainer per stage, a checkpoint after each.

    SelfRewardingTrainer(model, finetune_configs=[SFTConfig(...), SelfPlayConfig(...), SelfRewardDPOConfig(...)],
                         tokenizer_encode=..., tokenizer_decode=...)()

Each stage is built when it starts (its reference is the model at that moment) by the runner of its kind
(stages/registry.py), which gets a `StageContext` of this run. Stage i writes `stage-{i:02d}-{label}.pt`, the record
of the fingerprint its files are made under `stage-{i:02d}-{label}.plan.json` and, for preference stages, its own
pairs folder `stage-{i:02d}-{label}.pairs/` (stages never share files), the label being the config's `name` where it
has one (e.g. `stage-01-judge-training.pt`), else its kind (`stage-01-sft.pt`). Running the same script again
resumes: finished stages are skipped (their checkpoint is loaded), an interrupted stage's pair generation continues
from the pairs on disk, then its training starts over. Files made by another plan are refused (docs/fingerprint.md).
`trainer(overwrite_checkpoints=True)` or the environment variable SELF_REWARDING_CLEAR_CHECKPOINTS=1 clears this
run's files first; that is never the default.

`log_with="tensorboard"` (any Accelerate tracker name, or several) sends every stage's numbers to that tracker
under the stage's name, at a global step that keeps growing across stages (storage/tracking.py).
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from torch import Tensor, nn

from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, check_sampler_processes, make_sampler
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.models.contract import check_special_ids
from self_rewarding_lm_pytorch.models.sharding import (
    check_supported_sharding,
    full_state_dict,
    local_weights,
    max_over_ranks,
    place_on_device,
    same_on_every_rank,
)
from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageContext
from self_rewarding_lm_pytorch.stages.paper import create_default_paper_config
from self_rewarding_lm_pytorch.stages.registry import FinetuneConfig, check_known_kinds, check_plan, kind_of
from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from self_rewarding_lm_pytorch.storage.fingerprint import (
    changed_parts,
    config_fingerprint,
    describe,
    short,
    tokenizer_digest,
)
from self_rewarding_lm_pytorch.storage.integrity import (
    CorruptFileError,
    atomic_write_json,
    content_digest,
    remove_stale_temp_files,
)
from self_rewarding_lm_pytorch.storage.probes import probe_parts
from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger

CLEAR_CHECKPOINTS_ENV = "SELF_REWARDING_CLEAR_CHECKPOINTS"
# settings that do not change a stage's result: editing them keeps the stage's files usable
NOT_RESULT_FIELDS = ("checkpoint_every",)


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
        check_known_kinds(finetune_configs)
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
        self.plan_inputs = PlanInputs(model, tokenizer_encode, self.judge_encode, self.reward_config, pad_id)
        check_plan(self.stages, self.plan_inputs, eos_id)
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
        config = self.stages[index]
        return f"stage-{index:02d}-{config.name or kind_of(config).name}"

    def checkpoint_path(self, index: int) -> Path:
        return self.folder / f"{self.stage_name(index)}.pt"

    def pairs_folder(self, index: int) -> Path:
        return self.folder / f"{self.stage_name(index)}.pairs"

    def fingerprint(self, index: int) -> dict[str, str]:
        """What identifies stage i's result (storage/fingerprint.py): its settings, callables and datasets, the trainer's
        ids, seed, judge prompt and tokenizer, what its user callables return on its probes (storage/probes.py), and
        the fingerprint of stage i - 1 (stage 0: the initial weights), so a change anywhere upstream is a different
        plan. Computed once per trainer, when it trains (docs/fingerprint.md)."""
        if index not in self._fingerprints:
            config, kind = self.stages[index], kind_of(self.stages[index])
            parts = config_fingerprint(config, skip=(*NOT_RESULT_FIELDS, "name"))  # the name is in `stage`
            parts.update(
                stage=self.stage_name(index), pad_id=str(self.pad_id), eos_id=str(self.eos_id), seed=str(self.seed),
                tokenizer=tokenizer_digest(self.encode, self.decode),
                upstream=short(describe(self.fingerprint(index - 1))) if index else
                same_on_every_rank(content_digest(local_weights(self.model))[:16], self.model),
            )
            if kind.self_judged and config.reward_config is None:
                parts["reward_config"] = short(describe(self.reward_config))
            if kind.self_judged and self.judge_encode is not self.encode:
                parts["judge_tokenizer"] = tokenizer_digest(self.judge_encode, self.decode)
            if kind.generates and not isinstance(self.sampler, LibrarySampler):
                parts["generation_backend"] = short(describe(self.sampler))  # not for the default: old runs resume
            if kind.probes is not None:
                parts.update(probe_parts(kind.probes(config, self.plan_inputs)))
            self._fingerprints[index] = parts
        return self._fingerprints[index]

    def stage_context(self, index: int, logger: MetricsLogger) -> StageContext:
        """What stage i's runner gets from this run."""
        return StageContext(
            name=self.stage_name(index), folder=self.folder, model=self.model, accelerator=self.accelerator,
            sampler=self.sampler, encode=self.encode, decode=self.decode, judge_encode=self.judge_encode,
            reward_config=self.reward_config, pad_id=self.pad_id, eos_id=self.eos_id, seed=self.seed + index,
            fingerprint=self.fingerprint(index), logger=logger,
        )

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
            self.check_same_plan(f"{path} was written", index, saved.get("fingerprint"))
            done += 1
        return done

    def check_same_plan(self, what: str, index: int, saved: dict | None):
        """Raise, naming what changed and the ways out, unless `saved` is stage i's fingerprint."""
        changed = changed_parts(saved, self.fingerprint(index))
        if changed:
            raise ValueError(
                f"{what} by a different plan: stage {index} changed ({'; '.join(changed)}). Use another "
                f"checkpoints_folder, or clear it with trainer(overwrite_checkpoints=True) or {CLEAR_CHECKPOINTS_ENV}=1. "
                f"A change in what makes a stage's result always makes its files unusable, deliberate or not "
                f"(docs/fingerprint.md)"
            )

    def claim_stage_files(self, index: int):
        """Before stage i runs: `stage-{i:02d}-{kind}.plan.json` records the fingerprint its files (pairs, step saves)
        are made under. Found with another fingerprint, the stage is refused: an interrupted stage's step saves record
        the stage's own settings, data and initial weights, not the trainer's seed or tokenizer, and would otherwise
        be resumed."""
        path = self.folder / f"{self.stage_name(index)}.plan.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except ValueError as error:
                raise CorruptFileError(f"{path} cannot be read as JSON ({error}): delete it and the stage's other files "
                                       f"(trainer(overwrite_checkpoints=True)) to run the stage again") from error
            self.check_same_plan(f"the files of {self.stage_name(index)} in {self.folder} were made", index, saved)
        elif self.accelerator.is_main_process:
            atomic_write_json(path, self.fingerprint(index))
        self.accelerator.wait_for_everyone()

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

            kind = kind_of(config)
            self.claim_stage_files(index)
            summary = dict(stage=index, kind=kind.name)
            logger = MetricsLogger(self.accelerator, self.stage_name(index), start_step=self.next_step)
            try:
                summary.update(kind.run(config, self.stage_context(index, logger)))
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
