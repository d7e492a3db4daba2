"""A three-stage plan with resumable saves every 2 steps, for tests/integration/test_resume.py:

    python tests/scripts/resume_pipeline.py FOLDER [KILL_AT]

KILL_AT is `<loop>:<step>` (e.g. `sft:3`, `dpo:3`, `spin iteration-1:1`): the process kills itself with SIGKILL
when that loop reaches that step, before saving it. The final weights go to FOLDER/final.pt.
"""

import os
import signal
import sys

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import ExternalRewardDPOConfig, SelfPlayConfig, SelfRewardingTrainer, SFTConfig
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.train_state import TrainState


def checksum(prompt: str, response: str) -> float:
    return float(sum(map(ord, response)) % 7)


def main(folder: str, kill_at: str | None):
    if kill_at:
        loop, kill_step = kill_at.rsplit(":", 1)
        save_if_due = TrainState.save_if_due

        def dying_save(state, step, **kwargs):
            if state.name == loop and step == int(kill_step):
                os.kill(os.getpid(), signal.SIGKILL)
            return save_if_due(state, step, **kwargs)

        TrainState.save_if_due = dying_save

    tokenizer, task = CharTokenizer(), SortDigitsTask(length=3, seed=5)
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=tokenizer.num_tokens, max_seq_len=48, attn_layers=Decoder(dim=32, depth=1, heads=2))
    small = dict(batch_size=4, learning_rate=1e-3, end_learning_rate=1e-4, checkpoint_every=2, dropout=0.1)
    stages = [
        SFTConfig(train_dataset=task.instruction_examples(20), num_epochs=2, grad_accum_steps=1, **small),  # 10 steps
        ExternalRewardDPOConfig(prompt_dataset=task.prompts(24), reward_fn=checksum, temperature=1.0,
                                num_preference_pairs=6, prompt_batch_size=4, response_max_new_tokens=6,
                                num_train_steps=5, **small),  # 2 pairs batches: an epoch boundary at step 2
        SelfPlayConfig(train_sft_dataset=task.instruction_examples(6), max_seq_len=24, num_iterations=2,
                       num_train_steps=3, **small),
    ]
    trainer = SelfRewardingTrainer(model, finetune_configs=stages, tokenizer_encode=tokenizer.encode,
                                   tokenizer_decode=tokenizer.decode, eos_id=tokenizer.eos_id, checkpoints_folder=folder,
                                   accelerate_kwargs=dict(cpu=True), seed=7)
    trainer()
    torch.save(model.state_dict(), os.path.join(folder, "final.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
