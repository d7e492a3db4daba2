"""The SFT stage: supervised fine-tuning on the seed data (the paper's IFT and EFT examples, M0 -> M1)."""

from __future__ import annotations

from self_rewarding_lm_pytorch.stages.kind import StageContext, StageKind
from self_rewarding_lm_pytorch.storage.tracking import last_logged
from self_rewarding_lm_pytorch.training.sft import SFTConfig, SFTTrainer


def run_sft(config: SFTConfig, context: StageContext) -> dict:
    trainer = SFTTrainer(context.model, config, pad_id=context.pad_id, accelerator=context.accelerator,
                         checkpoint_folder=context.path("steps"), logger=context.logger)
    return last_logged(trainer.train(), ("loss", "valid_loss"))


SFT_STAGE = StageKind(name="sft", config=SFTConfig, run=run_sft, generates=False)
