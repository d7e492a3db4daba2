"""A HuggingFace causal LM you have on disk (e.g. distilgpt2, a Llama) through SFT and one self-rewarding iteration.

    pip install -e ".[hf]"      # from the checkout (the package index's project of that name is another package)
    python examples/hf_model.py /path/to/checkpoint [--steps 50] [--pairs 64]
    python examples/hf_model.py --tiny      # no checkpoint: a tiny random Llama built here, CPU, under a minute

The folder must hold the model and its tokenizer (what `save_pretrained` writes); nothing is downloaded. The task is
the bundled sort-digits task written as text, with the paper's EFT step done on short judge examples. Checkpoints go to
./checkpoints/hf, in the library's format and in the HF format (`stage-*.hf/`, loadable with `from_pretrained`).
Run it under `accelerate launch` for several GPUs or bf16.

Measured with `--tiny` and every other setting at its default (CPU, one thread, 2026-11): SFT 50 steps at 1e-3, then
64 of 64 pairs from 256 prompts, judge parse rate 0.96, tie rate 0.01, in 26 s; with model and task seeds 1-3 also 64 of
64 (parse rates 0.93, 0.98, 0.91). With SFT at 1e-4 the tiny model parsed 0 of 768 judgements and made 0 pairs, which is
why --tiny raises the rate. The 1e-4 default for a real checkpoint was not measured here (no pretrained weights).
tests/integration/test_hf_example.py runs `--tiny --pairs 16` and checks every pair is made.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from self_rewarding_lm_pytorch import RewardConfig, SelfRewardDPOConfig, SelfRewardingTrainer, SFTConfig
from self_rewarding_lm_pytorch.models.hf import HFCausalLM, hf_tokenizer_functions
from self_rewarding_lm_pytorch.pairs.selection import reward_within
from self_rewarding_lm_pytorch.tasks.sort_digits import SortDigitsTask, graded_score


def save_tiny_model(folder: str) -> str:
    """A random 2-layer Llama and a character-level tokenizer, written with `save_pretrained` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :.,\n"
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", help="a local folder with an AutoModelForCausalLM checkpoint and its tokenizer")
    parser.add_argument("--tiny", action="store_true",
                        help="no checkpoint: write a tiny random Llama and a character tokenizer to "
                             "./checkpoints/hf/tiny-model and run on them (CPU, minutes)")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per stage")
    parser.add_argument("--pairs", type=int, default=64, help="preference pairs for the self-rewarding stage")
    # SFT must teach the judge format ("Score: <n>") in --steps steps, or no judgement parses and no pair is made:
    # a random tiny model needs 1e-3 (1e-4 parsed 0 of 768 judgements), a pretrained one far less. DPO's rate does
    # not change how many pairs are made
    parser.add_argument("--sft-learning-rate", type=float, default=None, help="default 1e-3 with --tiny, else 1e-4")
    parser.add_argument("--dpo-learning-rate", type=float, default=1e-5)
    parser.add_argument("--prompts", type=int, default=None, help="prompts to try at most (default 4 x --pairs)")
    args = parser.parse_args()
    if (args.path is None) == (not args.tiny):
        parser.error("give a checkpoint folder, or --tiny (and no folder) for a tiny model built here")
    if args.tiny:
        args.path = save_tiny_model("./checkpoints/hf/tiny-model")
    if args.sft_learning_rate is None:
        args.sft_learning_rate = 1e-3 if args.tiny else 1e-4

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
        SelfRewardDPOConfig(prompt_dataset=task.prompts(args.prompts or 4 * args.pairs), num_preference_pairs=args.pairs,
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
