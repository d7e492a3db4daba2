"""SPIN: self-play fine-tuning (Chen et al. 2024, arXiv 2401.01335, Algorithm 1).

Each iteration t:
  1) the model as it is at the start of the iteration, θt, answers every SFT prompt (batched sampler; the
     prompts are split across processes),
  2) θt's log-probs of the real and of the generated responses are computed once and stored: θt is SPIN's
     reference, so no frozen copy of the model is kept,
  3) θt+1 is trained with the shared preference loss, real as chosen and generated as rejected, β = λ
     (SPIN's logistic loss ℓ(t) = log(1 + e^-t) is DPO's sigmoid loss).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.data.config_types import check_field_types
from self_rewarding_lm_pytorch.data.datasets import PromptResponse, normalize_sft_item, validate_sft_dataset
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, check_sampler_processes, make_sampler
from self_rewarding_lm_pytorch.generation.sampling import check_sampling_settings, top_p, warn_missing_eos
from self_rewarding_lm_pytorch.models.contract import check_special_ids
from self_rewarding_lm_pytorch.models.sharding import check_supported_sharding, max_over_ranks, place_on_device
from self_rewarding_lm_pytorch.storage.checkpoint import atomic_torch_save, load_model_weights, read_checkpoint
from self_rewarding_lm_pytorch.storage.fingerprint import changed_parts, describe, short
from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger
from self_rewarding_lm_pytorch.training.dpo import DPOConfig, DPOTrainer
from self_rewarding_lm_pytorch.training.dpo_objective import DPO
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs
from self_rewarding_lm_pytorch.training.options import TrainingLoopOptions, check_at_least_one
from self_rewarding_lm_pytorch.training.train_state import initial_weights_note, loop_fingerprint


class SPIN(DPO):
    """The SPIN loss on a policy: `SPIN(model, λ=0.1)`. Real responses are chosen, generated ones rejected,
    and the reference is θt (stored log-probs), so no reference copy is held."""

    def __init__(self, model: nn.Module, λ: float = 0.1, **dpo_kwargs):
        super().__init__(model, beta=λ, precomputed_reference=True, **dpo_kwargs)
        self.λ = λ


def spin_loss_options() -> set[str]:
    """The keyword arguments `spin_kwargs` may hold: λ and SPIN's (that is, DPO's) loss settings."""
    names = set(inspect.signature(SPIN.__init__).parameters) | set(inspect.signature(DPO.__init__).parameters)
    return (names - {"self", "model", "dpo_kwargs", "beta", "precomputed_reference", "ref_model", "pad_id"}) | {"λ"}


@dataclass(kw_only=True)
class SelfPlayConfig(TrainingLoopOptions):
    """A SPIN stage. `max_seq_len` caps prompt + generated response. Each of `num_iterations` iterations trains
    `num_train_steps` optimizer steps (or `num_epochs` over the SFT data when None) on fresh opponent answers.
    Learning rate as in SPIN (5e-7, constant unless end_learning_rate is lower); generation samples θt's own
    distribution (temperature 1, no filter) as in SPIN's y' ~ p_θt(·|x). The loop and optimiser fields are
    `TrainingLoopOptions` (training/options.py); `checkpoint_every` counts steps within an iteration, whose last
    step is always saved."""

    train_sft_dataset: Dataset
    max_seq_len: int
    valid_sft_dataset: Dataset | None = None
    num_iterations: int = 1
    spin_kwargs: dict = field(default_factory=dict)  # λ and loss settings, e.g. dict(λ=0.1)
    num_epochs: int | None = 2
    learning_rate: float = 5e-7
    end_learning_rate: float | None = None  # None: constant learning rate
    temperature: float = 1.0
    top_p: float | None = None
    generation_batch_size: int = 16
    dropout: float | None = 0.0  # no dropout while training, as DPO's: θt's stored log-probs are without it

    constant_rate_when_no_end: ClassVar[bool] = True

    def __post_init__(self):
        check_field_types(self)  # before any check compares a field
        validate_sft_dataset(self.train_sft_dataset, pad_id=-1, name="SelfPlayConfig.train_sft_dataset")
        unknown = set(self.spin_kwargs) - spin_loss_options()
        if unknown:
            raise ValueError(
                f"SelfPlayConfig.spin_kwargs has unknown settings {sorted(unknown)}; known: {sorted(spin_loss_options())}"
            )
        check_at_least_one(self, "max_seq_len", "num_iterations", "generation_batch_size")
        self.check_training_loop()
        if self.valid_every is not None and self.valid_sft_dataset is None:
            raise ValueError("SelfPlayConfig.valid_every is set but there is no valid_sft_dataset to evaluate on: pass "
                             "a valid_sft_dataset, or leave valid_every at None")
        check_sampling_settings(self, "temperature", "top_p")
        self.dpo_config()  # DPOConfig checks the loss settings of spin_kwargs as it is built

    def dpo_config(self) -> DPOConfig:
        """The DPO settings of an iteration: the loss from `spin_kwargs` (β = λ) and this stage's loop options."""
        loss = dict(self.spin_kwargs)
        beta = loss.pop("λ", 0.1)
        loop = {f.name: getattr(self, f.name) for f in fields(TrainingLoopOptions)}
        loop.update(num_epochs=None if self.num_train_steps else self.num_epochs,  # num_train_steps replaces epochs
                    end_learning_rate=self.end_learning_rate or self.learning_rate)  # None: constant
        return DPOConfig(beta=beta, **loss, **loop)


class SPINTrainer:
    """`SPINTrainer(model, train_sft_dataset=..., max_seq_len=..., spin_kwargs=dict(λ=0.1))()` runs SPIN.

    Pass a `SelfPlayConfig` or its fields. Checkpoints (every `checkpoint_every` steps and at each iteration's
    last step, so an iteration shorter than `checkpoint_every` still leaves one) go to
    `checkpoint_folder/iteration-{t}-step-{n}.pt`; the returned history has one row per optimizer step. A rerun
    reuses the saved iterations (finished ones, the pairs and step saves of an unfinished one) only when they were
    made with the same settings, SFT data, initial weights of `model`, seed, special ids and generation backend; it
    refuses them otherwise, naming what changed.
    `generation_backend`: what generates the opponent answers: "library" (the library's sampler), "vllm" or a
    `VLLMConfig` (HuggingFace models), or a sampler (generation/backend.py)."""

    def __init__(
        self,
        model: nn.Module,
        config: SelfPlayConfig | None = None,
        *,
        pad_id: int = -1,
        eos_id: int | None = None,
        accelerator: Accelerator | None = None,
        accelerate_kwargs: dict | None = None,
        checkpoint_folder: str | Path = "./checkpoints/spin",
        seed: int = 0,
        logger: MetricsLogger | None = None,
        generation_backend="library",
        **config_kwargs,
    ):
        if config is not None and config_kwargs:
            raise TypeError(f"pass either a SelfPlayConfig or its fields, not both (got {sorted(config_kwargs)})")
        self.config = config or SelfPlayConfig(**config_kwargs)
        # every prompt must leave room to generate: checked now, not after an iteration of training
        spin_items(self.config.train_sft_dataset, pad_id, self.config.max_seq_len)
        if self.config.valid_sft_dataset is not None:
            spin_items(self.config.valid_sft_dataset, pad_id, self.config.max_seq_len)
        check_special_ids(model, pad_id, eos_id, "SPINTrainer")
        if eos_id is None:
            warn_missing_eos("SPINTrainer", f"max_seq_len={self.config.max_seq_len}")
        self.model = model
        self.pad_id, self.eos_id = pad_id, eos_id
        self.accelerator = accelerator or Accelerator(**(accelerate_kwargs or {}))
        check_supported_sharding(self.accelerator, "SPINTrainer")
        self.sampler = make_sampler(generation_backend, model, where="SPINTrainer.generation_backend")
        check_sampler_processes(self.sampler, self.accelerator.num_processes, "SPINTrainer.generation_backend")
        self.checkpoint_folder = Path(checkpoint_folder)
        self.seed = seed
        self.logger = logger or MetricsLogger(self.accelerator, "spin")
        self.history: list[dict] = []
        # what the saved iterations must have been made from: computed now, before a resume loads weights
        self.fingerprint = self.run_fingerprint() if self.config.checkpoint_every else {}

    def run_fingerprint(self) -> dict[str, str]:
        """What SPIN's iterations are made from: the settings (except `num_iterations`: iteration t does not depend
        on how many follow it, so a finished run can be extended), the SFT data, the weights SPIN starts from (θ0),
        the generation seed, the special ids and a generation backend other than the library's."""
        parts = loop_fingerprint(self.config, initial_weights=self.model)
        parts.pop("num_iterations")
        parts.update(seed=str(self.seed), pad_id=str(self.pad_id), eos_id=str(self.eos_id))
        if not isinstance(self.sampler, LibrarySampler):
            parts["generation_backend"] = short(describe(self.sampler))
        return parts

    def check_made_by_this_run(self, path: Path, saved: dict | None, what: str):
        """Raise, naming what changed and the ways out, unless `saved` is this run's fingerprint."""
        changed = changed_parts(saved, self.fingerprint)
        if changed:
            raise ValueError(
                f"{path} was made by SPIN with other settings, data or initial weights (changed: {', '.join(changed)})"
                f"{initial_weights_note(saved, changed)}, so {what} cannot be reused. Use another checkpoint_folder, "
                f"or delete {self.checkpoint_folder} (overwrite_checkpoints=True) to start over"
            )

    def opponent_pairs(self, dataset: Dataset, iteration: int) -> list[dict]:
        """(real, generated) pairs for every item of `dataset`, generated and scored by the model as it is now (θt)."""
        accelerator, config = self.accelerator, self.config
        model = accelerator.unwrap_model(self.model)
        items = spin_items(dataset, self.pad_id, config.max_seq_len)

        mine = list(range(len(items)))[accelerator.process_index :: accelerator.num_processes]
        pairs = []
        # generation and the reference log-probs take as long as training: a bar (main process) shows them
        progress = tqdm(total=len(mine), desc=f"spin answers (iteration {iteration})", unit="prompt",
                        disable=not accelerator.is_local_main_process)
        # a sharded model: every rank makes as many sampler and log-prob calls as the busiest one (with no rows when
        # it has none left), since each forward is a collective
        num_calls = max_over_ranks(math.ceil(len(mine) / config.generation_batch_size), model)
        for start in range(0, num_calls * config.generation_batch_size, config.generation_batch_size):
            indices = mine[start : start + config.generation_batch_size]
            prompts = [items[i].prompt for i in indices]
            generated = self.sampler(
                model, prompts, config.max_seq_len,
                temperature=config.temperature,
                filter_fn=top_p if config.top_p is not None else None,
                filter_kwargs=dict(thres=config.top_p) if config.top_p is not None else None,
                pad_id=self.pad_id, eos_id=self.eos_id,
                generator=self.seed * 1_000_003 + iteration * 10_007 + (indices[0] if indices else 0),
            )
            real = [items[i].tokens for i in indices]
            fake = [torch.cat([items[i].prompt, g[g != self.pad_id].cpu()]) for i, g in zip(indices, generated)]
            prompt_len = torch.tensor([items[i].prompt_len for i in indices], dtype=torch.long)
            logps = reference_logprobs(model, real + fake, torch.cat([prompt_len, prompt_len]), self.pad_id,
                                       config.dpo_config().logp_reduction)
            if not torch.isfinite(logps).all():
                raise FloatingPointError(
                    f"SPIN iteration {iteration}: θt's log-probs of SFT items {indices} are not finite (the model's "
                    f"logits are NaN or inf), so they cannot be SPIN's reference; check the previous stage's weights"
                )
            logps = logps.tolist()
            for j, index in enumerate(indices):
                pairs.append(dict(
                    index=index, chosen=real[j], rejected=fake[j], prompt_len=int(prompt_len[j]),
                    chosen_ref_logp=logps[j], rejected_ref_logp=logps[len(indices) + j],
                ))
            progress.update(len(indices))
        progress.close()
        if accelerator.num_processes > 1:
            pairs = gather_object(pairs)
        return sorted(pairs, key=lambda pair: pair["index"])

    def finished_iterations(self) -> int:
        """With `checkpoint_every`: how many leading iterations a killed run finished (each saves its last step,
        marked finished); their rows rejoin the history and the model takes the last one's weights. A save made by
        another run (`run_fingerprint`) is refused."""
        if not self.config.checkpoint_every:
            return 0
        done = 0
        for iteration in range(self.config.num_iterations):
            saved = sorted(self.checkpoint_folder.glob(f"iteration-{iteration}-step-*.pt"),
                           key=lambda p: int(p.stem.rsplit("-", 1)[1]))
            if not saved:
                break
            state = read_checkpoint(saved[-1], way_out="delete it to resume from the save before it")
            self.check_made_by_this_run(saved[-1], spin_parts(state.get("fingerprint")),
                                        f"iteration {iteration}'s weights and rows")
            if not state["finished"]:
                break
            self.history += [dict(row, iteration=iteration) for row in state["history"]]
            load_model_weights(self.accelerator.unwrap_model(self.model), state, saved[-1])
            self.logger.resumed_at(state["step"])  # the trackers' steps go on after the finished iterations'
            self.logger.continue_after_last()
            done += 1
        return done

    def iteration_pairs(self, dataset: Dataset, iteration: int, split: str) -> PairList:
        """θt's (real, generated) pairs; with `checkpoint_every` they are saved, because a resumed iteration no
        longer has θt to make them again."""
        path = self.checkpoint_folder / f"iteration-{iteration}-{split}-pairs.pt"
        if self.config.checkpoint_every and path.is_file():
            saved = read_checkpoint(path, way_out="delete it and the iteration's step files to run the iteration again")
            self.check_made_by_this_run(path, saved.get("fingerprint"), f"iteration {iteration}'s {split} pairs")
            return PairList(saved["pairs"], self.pad_id)
        pairs = self.opponent_pairs(dataset, iteration)
        if self.config.checkpoint_every and self.accelerator.is_main_process:
            atomic_torch_save(dict(pairs=pairs, fingerprint=self.fingerprint), path)
        self.accelerator.wait_for_everyone()
        return PairList(pairs, self.pad_id)

    def train(self) -> list[dict]:
        config = self.config
        place_on_device(self.accelerator, self.model)  # θ0 answers on the accelerator, not on the host
        for iteration in range(self.finished_iterations(), config.num_iterations):
            # 1) θt answers every prompt; 2) its log-probs are the reference
            train_pairs = self.iteration_pairs(config.train_sft_dataset, iteration, "train")
            valid_pairs = None
            if config.valid_sft_dataset is not None:
                valid_pairs = self.iteration_pairs(config.valid_sft_dataset, iteration, "valid")
            self.sampler.release()  # generation is over until the next iteration: a backend may free its memory

            # 3) θt+1 learns to prefer the real answers over θt's
            trainer = DPOTrainer(
                self.model, train_pairs, config.dpo_config(), valid_dataset=valid_pairs, pad_id=self.pad_id,
                accelerator=self.accelerator, checkpoint_folder=self.checkpoint_folder,
                checkpoint_prefix=f"iteration-{iteration}", metric_prefix="spin", logger=self.logger,
                fingerprint_parts={f"{SPIN_PART}{name}": value for name, value in self.fingerprint.items()},
            )
            for row in trainer.train():
                self.history.append(dict(row, iteration=iteration))
            self.logger.continue_after_last()  # the next iteration's steps follow this one's on the trackers
            self.accelerator.free_memory()
        return self.history

    __call__ = train


SPIN_PART = "spin "  # the prefix of SPIN's parts in the fingerprint of an iteration's step saves


def spin_parts(fingerprint: dict | None) -> dict | None:
    """SPIN's parts of an iteration's step-save fingerprint, None when it has none (saved without them)."""
    if not isinstance(fingerprint, dict):
        return None
    parts = {name.removeprefix(SPIN_PART): value for name, value in fingerprint.items() if name.startswith(SPIN_PART)}
    return parts or None


def spin_items(dataset: Dataset, pad_id: int, max_seq_len: int) -> list[PromptResponse]:
    """The SFT examples as (tokens, prompt_len), each with a prompt that leaves room to generate."""
    validate_sft_dataset(dataset, pad_id, "SPIN sft dataset")
    items = [normalize_sft_item(dataset[i], pad_id, i) for i in range(len(dataset))]
    for index, item in enumerate(items):
        if item.prompt_len == 0:
            raise ValueError(f"SPIN item {index} has no prompt (prompt_len 0): SPIN generates answers to prompts")
        if item.prompt_len >= max_seq_len:
            raise ValueError(
                f"SPIN item {index}: the prompt is {item.prompt_len} tokens, leaving no room to generate under "
                f"max_seq_len={max_seq_len}: raise max_seq_len"
            )
    return items


class PairList(Dataset):
    """In-memory (chosen, rejected) pairs with stored reference log-probs, padded per batch by DPO's collate."""

    def __init__(self, pairs: list[dict], pad_id: int):
        self.pairs = pairs
        self.pad_id = pad_id
        self.has_ref_logps = True

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        pair = self.pairs[index]
        return dict(
            chosen=pair["chosen"], rejected=pair["rejected"], prompt_len=torch.tensor(pair["prompt_len"]),
            chosen_ref_logp=torch.tensor(pair["chosen_ref_logp"]), rejected_ref_logp=torch.tensor(pair["rejected_ref_logp"]),
        )
