"""The library's sampler on an HF model (through `HFCausalLM`) vs HF `generate`, same model and batch, greedy.

    python benchmarks/hf_sampling.py                   # Llama config: hidden 256, 4 layers; batch 8, prompt 32, 128 tokens
    python benchmarks/hf_sampling.py --new-tokens 32   # a quick run

Both use the model's own KV cache; prompts have different lengths (left padding). Target (issue 8): >= 1.0x.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from self_rewarding_lm_pytorch import sample
from self_rewarding_lm_pytorch.models.hf import HFCausalLM


def best_time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=8, max_position_embeddings=512, initializer_range=0.2)
    model = LlamaForCausalLM(config).eval()
    net = HFCausalLM(model)
    # prompt lengths from prompt/2 to prompt: a left-padded batch
    lengths = torch.linspace(args.prompt // 2, args.prompt, args.batch).long().tolist()
    prompts = [torch.randint(3, 1024, (n,)) for n in lengths]
    width = max(lengths)
    ids, mask = torch.zeros(args.batch, width, dtype=torch.long), torch.zeros(args.batch, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1

    ours_s, ours = best_time(lambda: sample(net, prompts, max_new_tokens=args.new_tokens, temperature=0.0), args.repeats)
    with torch.no_grad():
        theirs_s, theirs = best_time(lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                                            min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
                                                            eos_token_id=None), args.repeats)
    tokens = args.batch * args.new_tokens
    print(f"Llama hidden 256 x 4 layers, batch {args.batch}, prompts {min(lengths)}-{max(lengths)}, {args.new_tokens} new tokens, greedy")
    print(f"library sample:  {tokens / ours_s:8.0f} tok/s")
    print(f"HF generate:     {tokens / theirs_s:8.0f} tok/s")
    print(f"ratio: {theirs_s / ours_s:.2f}x   same tokens: {torch.equal(ours, theirs[:, width:])}")


if __name__ == "__main__":
    main()
