"""Run by tests/integration/test_vllm.py in its own process: a VLLMSampler whose engine takes weights through a temporary HF
export (the path for engines in other processes) generates the library sampler's greedy tokens before and after
the weights change, and leaves no weight files behind."""

import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

import torch  # noqa: E402

from self_rewarding_lm_pytorch import sample  # noqa: E402
from self_rewarding_lm_pytorch.generation.vllm_backend import VLLMSampler  # noqa: E402

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parents[1] / "integration")]  # tests/: helpers
from test_vllm import ENGINE, random_prompts, tiny_llama  # noqa: E402

if __name__ == "__main__":
    VLLMSampler.in_place = property(lambda self: False)
    sampler = VLLMSampler(ENGINE)
    net = tiny_llama(seed=12)
    prompts = random_prompts((5, 9), seed=12)
    assert torch.equal(sampler(net, prompts, max_new_tokens=8, temperature=0.0),
                       sample(net, prompts, max_new_tokens=8, temperature=0.0))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert torch.equal(sampler(net, prompts, max_new_tokens=8, temperature=0.0),
                       sample(net, prompts, max_new_tokens=8, temperature=0.0))
    assert sampler.num_weight_loads == 2, sampler.num_weight_loads
    assert not list(Path(sampler._folder.name).glob("*.safetensors*"))  # each export is removed after its load
    print("export ok")
