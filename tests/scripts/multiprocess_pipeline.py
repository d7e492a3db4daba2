"""A short four-stage pipeline run by every process of a launch, for tests/integration/test_multiprocess.py:

    torchrun --nproc_per_node 2 tests/scripts/multiprocess_pipeline.py OUTPUT_FOLDER

Each process saves its final weights to OUTPUT_FOLDER/rank-{r}.pt so the test can check they are identical.
PIPELINE_SHARD=1 shards the model with FSDP2 (`fully_shard_model`) instead of data parallelism.

Prompts have 2 or 4 digits, so ranks hold prompts of different lengths, and their answers end at different steps;
9 prompts per preference stage make a last global batch of 1 prompt (the other rank has none), SPIN's 5 examples
in batches of 2 give one rank 2 sampler calls and the other 1, and the judge's batch of 5 candidates makes 2 calls
of a rank's 8 candidates, 1 of the last batch's 4 and none on the rank without prompts.
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
from self_rewarding_lm_pytorch.models.sharding import full_state_dict, fully_shard_model
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

    tokenizer, short, long = CharTokenizer(), SortDigitsTask(length=2, seed=0), SortDigitsTask(length=4, seed=1)

    def mixed(method, n):  # every other item from the 2-digit and the 4-digit task
        return [item for pair in zip(getattr(short, method)(n), getattr(long, method)(n)) for item in pair]

    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=tokenizer.num_tokens, max_seq_len=48, attn_layers=Decoder(dim=32, depth=2, heads=2))
    sharded = os.environ.get("PIPELINE_SHARD") == "1"
    if sharded:
        fully_shard_model(model)

    small = dict(batch_size=4, learning_rate=1e-4, end_learning_rate=1e-5)
    pairs = dict(num_preference_pairs=9, max_prompts=9, accept_fewer_pairs=True, prompt_batch_size=2,
                 response_max_new_tokens=6, temperature=1.0)
    # the early stopper's score differs by rank: its decision must still be the same everywhere
    stopper = EarlyStopper(lambda m: float(accelerator.process_index), mode="min", patience=1)
    stages = [
        SFTConfig(train_dataset=mixed("instruction_examples", 12), valid_dataset=mixed("instruction_examples", 3), **small),
        SelfPlayConfig(train_sft_dataset=mixed("instruction_examples", 3)[:5], max_seq_len=24, num_train_steps=2,
                       generation_batch_size=2, **small),
        SelfRewardDPOConfig(prompt_dataset=mixed("prompts", 20), num_judgements=2, judge_max_new_tokens=4,
                            judge_batch_size=5, num_train_steps=4, early_stopper=stopper, early_stop_every=1,
                            **pairs, **small),
        ExternalRewardDPOConfig(prompt_dataset=mixed("prompts", 20), reward_fn=checksum, num_train_steps=2, **pairs, **small),
    ]
    trainer = SelfRewardingTrainer(
        model, finetune_configs=stages, tokenizer_encode=tokenizer.encode, tokenizer_decode=tokenizer.decode,
        # every answer parses (its length is the score): an untrained model still makes self-reward pairs
        self_reward_prompt_config=RewardConfig("{{ prompt }}|{{ response }}|", parse_reward=lambda text: float(len(text))),
        eos_id=tokenizer.eos_id, checkpoints_folder=os.path.join(folder, "checkpoints"), accelerator=accelerator,
    )
    trainer()
    # data parallel: each rank's own weights (the test checks they are equal); sharded: the gathered weights, once
    state_dict = full_state_dict(accelerator, model) if sharded else model.state_dict()
    if accelerator.is_main_process or not sharded:
        torch.save(state_dict, os.path.join(folder, f"rank-{accelerator.process_index}.pt"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # a two-process gloo run can hang at interpreter exit (see the platform notes): leave at once
    os._exit(0)
