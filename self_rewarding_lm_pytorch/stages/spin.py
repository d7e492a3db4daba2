"""The SPIN stage (Chen et al. 2024): the model learns to prefer the seed answers over its own."""

from __future__ import annotations

from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageContext, StageKind
from self_rewarding_lm_pytorch.storage.tracking import last_logged
from self_rewarding_lm_pytorch.training.spin import SelfPlayConfig, SPINTrainer, spin_items


def run_spin(config: SelfPlayConfig, context: StageContext) -> dict:
    spin = SPINTrainer(
        context.model, config, pad_id=context.pad_id, eos_id=context.eos_id, accelerator=context.accelerator,
        checkpoint_folder=context.path("iterations"), logger=context.logger, generation_backend=context.sampler,
        seed=context.seed,  # the trainer's seed + the stage index, as every generating stage
    )
    return last_logged(spin.train(), ("loss", "rewards/accuracies", "rewards/margins"))


def check_spin(stage: str, config: SelfPlayConfig, inputs: PlanInputs):
    """Every seed example splits into a prompt and a real answer that fit `max_seq_len`."""
    for field in ("train_sft_dataset", "valid_sft_dataset"):
        dataset = getattr(config, field)
        if dataset is None:
            continue
        try:
            spin_items(dataset, inputs.pad_id, config.max_seq_len)
        except ValueError as error:
            raise ValueError(f"{stage}.{field}: {error}") from None


SPIN_STAGE = StageKind(name="spin", config=SelfPlayConfig, run=run_spin, check=check_spin, answer_budget="max_seq_len")
