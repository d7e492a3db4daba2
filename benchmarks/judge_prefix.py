"""Judgements per second with the paper's judge prompt (`RewardConfig()`), the judge's shared prefix computed once per
sampler call vs every judge prompt run whole: same model, same candidates, same settings, one run, interleaved.

The paper's prompt is about 1,750 characters, of which the ~1,300 before `{{ prompt }}` are the same in every
judgement. Short prompts and responses (sort-digits), short judge answers: the prefill dominates, as it does for a
judge whose answer is a score.

    python benchmarks/judge_prefix.py
    python benchmarks/judge_prefix.py --repeats 1 --candidates 4     # a quick run
    python benchmarks/judge_prefix.py --rotary --new-tokens 1        # rotary positions; prefill only

Target (issue 17): shared >= 2x whole.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import RewardConfig
from self_rewarding_lm_pytorch.judging.judges import Candidates, SelfJudge
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask, solve


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=16, help="candidates judged (one sampler call, the default judge batch)")
    parser.add_argument("--judgements", type=int, default=3, help="K judgements per candidate")
    parser.add_argument("--new-tokens", type=int, default=16, help="judge answer length cap")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rotary", action="store_true", help="rotary positions (default: x-transformers' absolute)")
    args = parser.parse_args()
    torch.set_num_threads(2)

    tokenizer, task = CharTokenizer(), SortDigitsTask(length=4, seed=0)
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=tokenizer.num_tokens, max_seq_len=2048,
                               attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=4, rotary_pos_emb=args.rotary)).eval()
    prompts = task.prompts(args.candidates)
    candidates = Candidates(prompts, [tokenizer.encode(p) for p in prompts],
                            [solve([int(d) for d in p.split(":")[0].split()[1:]]) for p in prompts], [])
    config = RewardConfig()
    prefix_chars = len(config.prompt_template.split("{{ prompt }}")[0])
    rendered = config.render(candidates.prompts[0], candidates.responses[0])
    print(f"model: dim {args.dim}, depth {args.depth}, {'rotary' if args.rotary else 'absolute'} positions, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; "
          f"judge prompt {len(rendered)} tokens, shared prefix {prefix_chars}; {args.candidates} candidates x "
          f"{args.judgements} judgements, {args.new_tokens} new tokens, temperature 0.7, top-p 0.9")

    judges = {
        name: SelfJudge(model, config, tokenizer_encode=tokenizer.encode, tokenizer_decode=tokenizer.decode,
                        num_judgements=args.judgements, max_new_tokens=args.new_tokens, eos_id=tokenizer.eos_id,
                        batch_size=args.candidates, share_prefix=share)
        for name, share in (("whole", False), ("shared", True))
    }
    seconds = {name: [] for name in judges}
    outputs = {}
    judges["shared"](candidates, seed=0)  # warm-up
    for _ in range(args.repeats):
        for name, judge in judges.items():  # interleaved: the machine's load hits both alike
            start = time.perf_counter()
            outputs[name] = judge(candidates, seed=0).raw_outputs
            seconds[name].append(time.perf_counter() - start)

    num = args.candidates * args.judgements
    rate = {name: num / statistics.median(s) for name, s in seconds.items()}
    for name in judges:
        print(f"{name:>6}: {rate[name]:.2f} judgements/s (median of {args.repeats}: "
              f"{', '.join(f'{s:.2f}' for s in seconds[name])} s)")
    print(f"shared / whole: {rate['shared'] / rate['whole']:.2f}x; same judgements: {outputs['shared'] == outputs['whole']}")


if __name__ == "__main__":
    main()
