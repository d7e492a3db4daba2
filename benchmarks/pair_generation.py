"""Pair-generation throughput (pairs per second), in one run on one model with the same settings
(N = 4 candidates, K = 3 self-judgements each, the model's own judge):
  (a) one sequence at a time: each candidate sampled alone, each judgement sampled alone (the original's loops)
  (b) this generator with one prompt per batch (its N candidates and N x K judgements still batched)
  (c) this generator with 16 prompts per batch

    python benchmarks/pair_generation.py
    python benchmarks/pair_generation.py --pairs 8      # a quick run

Target (issue 5): (c) >= 4x (a).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from accelerate import Accelerator
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import RewardConfig, sample
from self_rewarding_lm_pytorch.judging.judges import SelfJudge, strip_response
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.loop import generate_preference_pairs
from self_rewarding_lm_pytorch.pairs.selection import best_and_worst
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

TOKENIZER = CharTokenizer()
# a judge that always parses (its score is a checksum of its answer), so every prompt costs the same work
REWARD_CONFIG = RewardConfig("judge {{ prompt }}{{ response }}|", parse_reward=lambda text: float(sum(map(ord, text)) % 11))


def one_at_a_time(model, prompts, num_pairs, n, k, settings) -> int:
    """The original's structure: a Python loop over prompts, candidates and judgements, one row per call."""
    made = 0
    for step, prompt in enumerate(prompts):
        ids = TOKENIZER.encode(prompt)
        responses = [sample(model, [ids], generator=step * 100 + c, **settings["response"])[0] for c in range(n)]
        texts = [TOKENIZER.decode(strip_response(r, -1, 0)) for r in responses]
        scores = []
        for c, text in enumerate(texts):
            judge_ids = TOKENIZER.encode(REWARD_CONFIG.render(prompt, text))
            outputs = [sample(model, [judge_ids], generator=step * 1000 + c * 10 + j, **settings["judge"])[0] for j in range(k)]
            scores.append(sum(REWARD_CONFIG.parse(TOKENIZER.decode(o)) for o in outputs) / k)
        if (best_and_worst(torch.tensor([scores]))[0] >= 0).all():
            made += 1
            if made == num_pairs:
                break
    return made


def batched(model, prompts, num_pairs, n, k, batch, settings) -> int:
    judge = SelfJudge(model, REWARD_CONFIG, tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                      num_judgements=k, max_new_tokens=settings["judge"]["max_new_tokens"], temperature=0.7, eos_id=0)
    config = PairGenerationConfig(num_preference_pairs=num_pairs, num_candidate_responses=n, prompt_batch_size=batch,
                                  response_max_new_tokens=settings["response"]["max_new_tokens"], max_seq_len=64)
    with tempfile.TemporaryDirectory() as folder:
        stats = generate_preference_pairs(model, prompts, judge, config, folder=folder, tokenizer_encode=TOKENIZER.encode,
                                          tokenizer_decode=TOKENIZER.decode, accelerator=Accelerator(cpu=True), eos_id=0)
    return stats.pairs_made


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = TransformerWrapper(num_tokens=TOKENIZER.num_tokens, max_seq_len=64,
                               attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=8)).eval()
    prompts = SortDigitsTask(length=5, seed=0).prompts(args.pairs * 4)
    n, k = 4, 3
    settings = dict(
        response=dict(max_new_tokens=16, temperature=0.7, eos_id=0),
        judge=dict(max_new_tokens=8, temperature=0.7, eos_id=0),
    )

    results = {}
    for name, run in [
        ("(a) one sequence at a time", lambda: one_at_a_time(model, prompts, args.pairs, n, k, settings)),
        ("(b) 1 prompt per batch", lambda: batched(model, prompts, args.pairs, n, k, 1, settings)),
        ("(c) 16 prompts per batch", lambda: batched(model, prompts, args.pairs, n, k, 16, settings)),
    ]:
        start = time.perf_counter()
        made = run()
        results[name] = made / (time.perf_counter() - start)
        print(f"{name:<28} {made:>3} pairs  {results[name]:6.2f} pairs/s")

    base = results["(a) one sequence at a time"]
    print(f"(c)/(a) = {results['(c) 16 prompts per batch'] / base:.1f}x   (b)/(a) = {results['(b) 1 prompt per batch'] / base:.1f}x")


if __name__ == "__main__":
    main()
