"""A Meta-Rewarding stage run by every process of a launch, for tests/integration/test_meta_reward.py:

    torchrun --nproc_per_node 2 tests/scripts/multiprocess_meta_reward.py OUTPUT_FOLDER

Each rank makes pairs from its share of every prompt batch; the main process writes both kinds; DPO trains on them
data-parallel. Each process saves its final weights to OUTPUT_FOLDER/rank-{r}.pt. The judge's and the meta-judge's
readers accept any text of an untrained model (a score and a verdict from its characters' codes), so pairs of both
kinds are made; 9 prompts in global batches of 4 leave one rank without prompts in the last batch.
"""

import os
import sys

import torch
from accelerate import Accelerator
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import MetaJudgeConfig, MetaRewardDPOConfig, RewardConfig, SelfRewardingTrainer
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask


def main(folder: str):
    accelerator = Accelerator(cpu=True)
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=tokenizer.num_tokens, max_seq_len=64, attn_layers=Decoder(dim=32, depth=1, heads=2))
    stage = MetaRewardDPOConfig(
        prompt_dataset=SortDigitsTask(length=2, seed=0).prompts(9), max_prompts=9, accept_fewer_pairs=True,
        reward_config=RewardConfig("J{{ prompt }}{{ response }}|", parse_reward=lambda text: float(sum(map(ord, text)) % 3)),
        meta_judge_config=MetaJudgeConfig("M{{ prompt }}{{ response }}|{{ judgement_a }}|{{ judgement_b }}|",
                                          parse_verdict=lambda text: sum(map(ord, text)) % 2),
        num_preference_pairs=9, num_judge_pairs=9, num_candidate_responses=2, num_judgements=3, prompt_batch_size=2,
        response_max_new_tokens=5, judge_max_new_tokens=5, meta_judge_max_new_tokens=5, temperature=1.0,
        judge_temperature=1.0, meta_judge_temperature=1.0, num_train_steps=2, batch_size=4, learning_rate=1e-4,
        end_learning_rate=1e-5,
    )
    SelfRewardingTrainer(model, finetune_configs=[stage], tokenizer_encode=tokenizer.encode,
                         tokenizer_decode=tokenizer.decode, eos_id=tokenizer.eos_id,
                         checkpoints_folder=os.path.join(folder, "checkpoints"), accelerator=accelerator)()
    torch.save(model.state_dict(), os.path.join(folder, f"rank-{accelerator.process_index}.pt"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # a two-process gloo run can hang at interpreter exit (see the platform notes)
