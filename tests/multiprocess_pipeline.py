"""A short four-stage pipeline run by every process of a launch, for tests/test_multiprocess.py:

    torchrun --nproc_per_node 2 tests/multiprocess_pipeline.py OUTPUT_FOLDER

Each process saves its final weights to OUTPUT_FOLDER/rank-{r}.pt so the test can check they are identical.
"""

import os
import signal
import sys
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import (
    EarlyStopper,
    ExternalRewardDPOConfig,
    RewardConfig,
    SelfPlayConfig,
    SelfRewardDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
    SFTTrainer,
)
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask


def checksum(prompt: str, response: str) -> float:
    return float(sum(map(ord, response)) % 7)


def main(folder: str):
    timeout = float(os.environ.get("PIPELINE_COLLECTIVE_TIMEOUT_S", 1800))
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout))])
    if os.environ.get("PIPELINE_FAIL_ON_RANK") == str(accelerator.process_index):
        raise RuntimeError(f"deliberate failure on rank {accelerator.process_index}")
    for variable, sig in (("PIPELINE_KILL_RANK_IN_SFT", signal.SIGKILL), ("PIPELINE_STOP_RANK_IN_SFT", signal.SIGSTOP)):
        if os.environ.get(variable) == str(accelerator.process_index):
            # this rank dies (or freezes) without a word in the middle of training, after its first optimizer step
            log = SFTTrainer.log
            SFTTrainer.log = lambda self, row, sig=sig: os.kill(os.getpid(), sig) if row["step"] == 1 else log(self, row)

    tokenizer, task = CharTokenizer(), SortDigitsTask(length=3, seed=0)
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=tokenizer.num_tokens, max_seq_len=48, attn_layers=Decoder(dim=32, depth=1, heads=2))

    small = dict(batch_size=4, learning_rate=1e-4, end_learning_rate=1e-5)
    pairs = dict(num_preference_pairs=6, prompt_batch_size=2, response_max_new_tokens=6, temperature=1.0)
    # the early stopper's score differs by rank: its decision must still be the same everywhere
    stopper = EarlyStopper(lambda m: float(accelerator.process_index), mode="min", patience=1)
    stages = [
        SFTConfig(train_dataset=task.instruction_examples(24), valid_dataset=task.instruction_examples(6), **small),
        SelfPlayConfig(train_sft_dataset=task.instruction_examples(8), max_seq_len=24, num_train_steps=2, **small),
        SelfRewardDPOConfig(prompt_dataset=task.prompts(40), num_judgements=2, judge_max_new_tokens=4,
                            num_train_steps=4, early_stopper=stopper, early_stop_every=1, **pairs, **small),
        ExternalRewardDPOConfig(prompt_dataset=task.prompts(40), reward_fn=checksum, num_train_steps=2, **pairs, **small),
    ]
    trainer = SelfRewardingTrainer(
        model, finetune_configs=stages, tokenizer_encode=tokenizer.encode, tokenizer_decode=tokenizer.decode,
        # every answer parses (its length is the score): an untrained model still makes self-reward pairs
        self_reward_prompt_config=RewardConfig("{{ prompt }}|{{ response }}|", parse_reward=lambda text: float(len(text))),
        eos_id=tokenizer.eos_id, checkpoints_folder=os.path.join(folder, "checkpoints"), accelerator=accelerator,
    )
    trainer()
    torch.save(model.state_dict(), os.path.join(folder, f"rank-{accelerator.process_index}.pt"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # a two-process gloo run can hang at interpreter exit (see the platform notes): leave at once
    os._exit(0)
