"""A HuggingFace causal LM you have on disk (e.g. distilgpt2, a Llama) through SFT and one self-rewarding iteration.

    pip install "self-rewarding-lm-pytorch[hf]"
    python examples/hf_model.py /path/to/checkpoint [--steps 50] [--pairs 64]

The folder must hold the model and its tokenizer (what `save_pretrained` writes); nothing is downloaded. The task is
the bundled sort-digits task written as text, with the paper's EFT step done on short judge examples. Checkpoints go to
./checkpoints/hf, in the library's format and in the HF format (`stage-*.hf/`, loadable with `from_pretrained`).
Run it under `accelerate launch` for several GPUs or bf16.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from self_rewarding_lm_pytorch import RewardConfig, SelfRewardDPOConfig, SelfRewardingTrainer, SFTConfig, reward_within
from self_rewarding_lm_pytorch.hf import HFCausalLM, hf_tokenizer_functions
from self_rewarding_lm_pytorch.tasks.sort_digits import SortDigitsTask, graded_score


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a local folder with an AutoModelForCausalLM checkpoint and its tokenizer")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per stage")
    parser.add_argument("--pairs", type=int, default=64, help="preference pairs for the self-rewarding stage")
    # SFT must teach the judge format ("Score: <n>") in a few dozen steps, or no judgement parses and no pair is
    # made: 1e-5 was too low for that; DPO keeps the smaller rate
    parser.add_argument("--sft-learning-rate", type=float, default=1e-4)
    parser.add_argument("--dpo-learning-rate", type=float, default=1e-5)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.path, local_files_only=True)
    model = HFCausalLM(AutoModelForCausalLM.from_pretrained(args.path, local_files_only=True))
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer)

    reward_config = RewardConfig(
        "Rate the answer from 0 to 5.\nQuestion: {{ prompt }}\nAnswer: {{ response }}\n", score_range=(0, 5)
    )
    task = SortDigitsTask(length=5, seed=0)

    def example(prompt: str, response: str):
        prompt_ids = encode(prompt)
        return torch.cat([prompt_ids, encode(response), torch.tensor([eos_id])]), len(prompt_ids)

    seed_data = [example(p, r) for p, r in (
        (prompt, " " + " ".join(sorted(prompt[5:-1].split()))) for prompt in task.prompts(512)
    )]
    judge_data = []
    for _ in range(512):
        digits = task.random_digits()
        prompt, response = f"sort {' '.join(map(str, digits))}:", task.candidate_response(digits)
        judge_data.append(example(reward_config.render(prompt, response), f"Score: {graded_score(prompt, response):g}"))

    training = dict(batch_size=8, grad_accum_steps=2, num_train_steps=args.steps)
    stages = [
        SFTConfig(train_dataset=seed_data + judge_data, learning_rate=args.sft_learning_rate,
                  end_learning_rate=args.sft_learning_rate / 10, **training),
        SelfRewardDPOConfig(prompt_dataset=task.prompts(4 * args.pairs), num_preference_pairs=args.pairs,
                            response_max_new_tokens=16, judge_max_new_tokens=8, max_seq_len=256,
                            is_valid_reward=reward_within(0, 5), verifier=graded_score,
                            learning_rate=args.dpo_learning_rate, end_learning_rate=args.dpo_learning_rate / 10,
                            **training),
    ]
    trainer = SelfRewardingTrainer(model, finetune_configs=stages, tokenizer_encode=encode, tokenizer_decode=decode,
                                   self_reward_prompt_config=reward_config, eos_id=eos_id, checkpoints_folder="./checkpoints/hf")
    for summary in trainer():
        print(summary)


if __name__ == "__main__":
    main()
