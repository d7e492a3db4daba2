"""The vLLM generation backend against the library's sampler, on tiny HF Llamas built here (vllm-cpu runs them).

Needs the [vllm] extra; skipped with the reason where vllm is not installed (CI installs it in its own environment:
.ci/run). The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) with a small fixed KV cache.
"""

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_watched

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # leave this process's threads as the tests set them
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
pytest.importorskip("vllm", reason="needs the [vllm] extra (vllm, or vllm-cpu on a CPU-only machine): see .ci/run")
transformers = pytest.importorskip("transformers", reason="needs transformers")

from accelerate import Accelerator  # noqa: E402

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    RewardConfig,
    SelfPlayConfig,
    SelfRewardingTrainer,
    SFTConfig,
    VLLMConfig,
    sample,
    top_p,
)
from self_rewarding_lm_pytorch.data.datasets import pad_right  # noqa: E402
from self_rewarding_lm_pytorch.generation.backend import check_sampler_processes, make_sampler  # noqa: E402
from self_rewarding_lm_pytorch.generation.sampling import min_p, top_k
from self_rewarding_lm_pytorch.generation.vllm_backend import VLLMSampler  # noqa: E402
from self_rewarding_lm_pytorch.judging.judges import (
    RewardFnJudge,
    SelfJudge,  # noqa: E402
)
from self_rewarding_lm_pytorch.models.contract import forward_logits  # noqa: E402
from self_rewarding_lm_pytorch.models.hf import HFCausalLM  # noqa: E402
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.loop import generate_preference_pairs
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset  # noqa: E402
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask  # noqa: E402
from self_rewarding_lm_pytorch.training.logprobs import model_sequence_logprobs, response_mask  # noqa: E402

pytestmark = pytest.mark.vllm

TOKENIZER = CharTokenizer()
VOCAB = CharTokenizer.num_tokens
# a small engine for CPU: eager (no compilation), 64 MiB of KV cache, KV blocks of 32 tokens (the CPU default, 128,
# is longer than these models' 64 positions: no prompt would fill a block the prefix cache keeps)
ENGINE = VLLMConfig(kv_cache_memory_bytes=64 * 2**20, enforce_eager=True, max_model_len=64,
                    engine_kwargs=dict(block_size=32))


def tiny_llama(seed: int = 0, head_scale: float = 1.0) -> HFCausalLM:
    """Head size 32 (vLLM's CPU attention takes 32 and up). `head_scale` sharpens the output distribution."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                      initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return HFCausalLM(model)


@pytest.fixture(scope="module")
def sampler():
    """One engine for the module: one sampler serves models of one architecture, reloading weights as they change."""
    return make_sampler(ENGINE)


def random_prompts(lengths, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=generator) for n in lengths]


def test_greedy_tokens_equal_the_library_samplers_on_left_padded_prompts_of_different_lengths(sampler):
    """Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    net = tiny_llama()
    prompts = random_prompts((3, 9, 5, 17))
    ours = sample(net, prompts, max_new_tokens=10, temperature=0.0)
    # an EOS that some rows produce part-way: they stop there (EOS kept), the others run to their cap
    eos_id = int(ours[0, 4])
    settings = dict(temperature=0.0, eos_id=eos_id, pad_id=-1)
    library = sample(net, prompts, 24, max_new_tokens=10, **settings)
    assert (library == -1).any() and (library[:, -1] != -1).any()  # both kinds of row are in the batch
    assert torch.equal(sampler(net, prompts, 24, max_new_tokens=10, **settings), library)
    # seq_len caps each row by its own prompt (17 + 7 = 24); prompt-major samples; prompts kept in front
    for extra in (dict(), dict(num_samples=2), dict(output_keep_prompt=True)):
        assert torch.equal(sampler(net, prompts, 24, max_new_tokens=10, **settings, **extra),
                           sample(net, prompts, 24, max_new_tokens=10, **settings, **extra)), extra
    # a shared prefix is the same as putting it in front of every prompt
    prefix = random_prompts((6,), seed=2)[0]
    assert torch.equal(sampler(net, prompts, max_new_tokens=6, temperature=0.0, shared_prefix=prefix),
                       sample(net, [torch.cat([prefix, p]) for p in prompts], max_new_tokens=6, temperature=0.0))


def test_only_the_callers_eos_stops_a_row_not_the_models_config_eos(sampler):
    """vLLM stops at the EOS ids of the model's (generation) config unless told otherwise; the library stops at
    `eos_id` only. The model's config says EOS is 2: rows that produce 2 go on, on both backends.
    Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    net = tiny_llama(seed=14)
    assert net.model.config.eos_token_id == 2
    prompts = random_prompts([5] * 32, seed=14)
    for eos_id in (None, 0):
        library = sample(net, prompts, max_new_tokens=20, temperature=0.0, eos_id=eos_id)
        assert (library[:, :-1] == 2).any()  # the config's EOS is produced mid-row
        assert torch.equal(sampler(net, prompts, max_new_tokens=20, temperature=0.0, eos_id=eos_id), library)


def test_seeded_sampling_of_a_batch_larger_than_one_engine_step(sampler):
    """7,680 prompt tokens: more than one engine step prefills, the case where vllm-cpu 0.32 fails on seeded requests
    unless prefill is not chunked (set by VLLMConfig on CPU). Seeded: the same draws again.
    Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    net = tiny_llama(seed=2)
    prompts = random_prompts([60] * 128, seed=2)
    first = sampler(net, prompts, max_new_tokens=2, temperature=1.0, generator=5)
    assert first.shape == (128, 2) and torch.equal(first, sampler(net, prompts, max_new_tokens=2, temperature=1.0,
                                                                  generator=5))


def test_after_training_steps_the_engine_generates_from_the_updated_weights(sampler):
    """Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    net = tiny_llama(seed=3)
    prompts = random_prompts((4, 7, 11), seed=3)
    before = sampler(net, prompts, max_new_tokens=12, temperature=0.0)
    assert torch.equal(before, sample(net, prompts, max_new_tokens=12, temperature=0.0))
    loads = sampler.num_weight_loads
    sampler(net, prompts, max_new_tokens=12, temperature=0.0)
    assert sampler.num_weight_loads == loads  # unchanged weights are not loaded again

    # a few optimizer steps on the policy: the next call loads the new weights
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-2)
    data = torch.randint(3, VOCAB, (8, 16), generator=torch.Generator().manual_seed(4))
    net.train()
    for _ in range(3):
        logits = forward_logits(net, data[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), data[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    after = sampler(net, prompts, max_new_tokens=12, temperature=0.0)
    assert sampler.num_weight_loads == loads + 1
    assert not torch.equal(after, before)  # training changed the answers: a stale engine would not see it
    assert torch.equal(after, sample(net, prompts, max_new_tokens=12, temperature=0.0))


def test_the_prefix_cache_of_old_weights_is_not_reused_after_a_weight_load(sampler):
    """Prompts longer than a KV block (like the judge template) generated before and after the weights change: the
    engine's cached blocks of the old weights must not serve the new ones (they did, before the cache was reset).
    Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    net = tiny_llama(seed=13)
    prompts = random_prompts((48, 50), seed=13)
    assert torch.equal(sampler(net, prompts, max_new_tokens=8, temperature=0.0),
                       sample(net, prompts, max_new_tokens=8, temperature=0.0))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    assert torch.equal(sampler(net, prompts, max_new_tokens=8, temperature=0.0),
                       sample(net, prompts, max_new_tokens=8, temperature=0.0))


def test_lora_adapters_are_merged_into_the_engines_weights_and_the_model_is_left_as_it_is(sampler):
    """Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    peft = pytest.importorskip("peft", reason="needs peft")
    net = tiny_llama(seed=5)
    # random (nonzero) B matrices: the adapters change the model's answers from the start
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    policy = HFCausalLM(peft.get_peft_model(net.model, lora))
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    prompts = random_prompts((5, 8), seed=5)
    ours = sample(policy, prompts, max_new_tokens=10, temperature=0.0)
    with policy.model.disable_adapter():
        assert not torch.equal(ours, sample(policy, prompts, max_new_tokens=10, temperature=0.0))
    assert torch.equal(sampler(policy, prompts, max_new_tokens=10, temperature=0.0), ours)
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in state.items())


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    kept = expected > 0
    return float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum())


@pytest.mark.parametrize("filter_fn, filter_kwargs", [(top_p, dict(thres=0.6)), (top_k, dict(k=6)), (min_p, dict(min_p=0.2))],
                         ids=["top_p", "top_k", "min_p"])
def test_sampled_first_tokens_follow_the_exact_filtered_softmax_on_both_backends(sampler, filter_fn, filter_kwargs):
    """Temperature first, then the filter, as transformers: the empirical first-token frequencies of 4,000 seeded
    draws match the exact distribution computed here from the logits (chi-square far under a bound that a wrong
    temperature or filter order exceeds by far), and no token outside the filter's set is ever drawn. The draws are
    seeded, so the test cannot flake. Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    net, temperature, draws = tiny_llama(seed=6, head_scale=1.5), 1.5, 4000
    prompt = random_prompts((6,), seed=6)
    with torch.no_grad():
        logits = forward_logits(net, prompt[0][None])[0, -1].double()
    exact = filter_fn(logits / temperature, **filter_kwargs).softmax(-1)
    wrong_order = (filter_fn(logits, **filter_kwargs) / temperature).softmax(-1)  # filter before temperature
    support = int((exact > 0).sum())
    assert 3 <= support < VOCAB // 2  # the filter matters on this model
    bound = support + 10 * math.sqrt(2 * support)  # ~7 standard deviations above the mean of chi-square(support - 1)
    if filter_fn is not top_k:  # (top-k keeps the same tokens in either order; its test is the support and the shape)
        assert chi_square(exact * draws, wrong_order) > 5 * bound  # the check can tell the two orders apart

    settings = dict(temperature=temperature, filter_fn=filter_fn, filter_kwargs=filter_kwargs, max_new_tokens=1,
                    num_samples=draws, generator=11)
    for backend in (sampler, sample):
        first = backend(net, prompt, **settings)[:, 0]
        counts = torch.bincount(first, minlength=VOCAB).double()
        assert counts[exact == 0].sum() == 0, backend  # never a token the filter removed
        assert chi_square(counts, exact) < bound, backend


def digit_count(prompt: str, response: str) -> float:
    return float(sum(c.isdigit() for c in response))


class Interrupt(Exception):
    pass


CRASH = dict(calls=0, after=None)


def dies_when_told(prompt, response):
    CRASH["calls"] += 1
    if CRASH["after"] is not None and CRASH["calls"] > CRASH["after"]:
        raise Interrupt
    return digit_count(prompt, response)


def test_pair_generation_end_to_end_on_vllm_with_a_resume_after_a_kill(sampler, tmp_path):
    """Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    net = tiny_llama(seed=7)
    prompts = SortDigitsTask(length=3, seed=7).prompts(32)
    config = PairGenerationConfig(num_preference_pairs=12, prompt_batch_size=4, num_candidate_responses=4,
                                  response_max_new_tokens=8, temperature=1.0, top_p=0.95, max_seq_len=40)

    def generate(folder, judge=RewardFnJudge(dies_when_told)):
        return generate_preference_pairs(net, prompts, judge, config, folder=folder, tokenizer_encode=TOKENIZER.encode,
                                         tokenizer_decode=TOKENIZER.decode, accelerator=Accelerator(cpu=True),
                                         eos_id=TOKENIZER.eos_id, sampler=sampler)

    generate(tmp_path / "whole")
    CRASH["calls"], CRASH["after"] = 0, 2 * 4 * 4 + 3  # two batches of 4 prompts x 4 candidates, then part of the third
    with pytest.raises(Interrupt):
        generate(tmp_path / "resumed")
    assert 0 < len(DPODataset(tmp_path / "resumed")) < 12
    CRASH["after"] = None
    generate(tmp_path / "resumed")

    whole, resumed = DPODataset(tmp_path / "whole"), DPODataset(tmp_path / "resumed")
    assert len(resumed) == 12 and resumed.meta["complete"]
    assert resumed.records() == whole.records()  # seeded requests: the resumed run made the same pairs
    lines = [json.loads(line) for line in (tmp_path / "resumed" / "pairs.jsonl").read_text().splitlines()]
    assert [line["prompt_index"] for line in lines] == [r["prompt_index"] for r in whole.records()]
    for index, record in enumerate(resumed.records()):
        item = resumed[index]
        assert record["chosen_score"] > record["rejected_score"]
        chosen = item["chosen"][item["chosen"] != -1]
        assert TOKENIZER.decode(chosen[item["prompt_len"]:]) == record["chosen"]  # the stored tokens are the text's

    # the stored reference log-probs are the library's own forward of the generating weights, recomputed here
    seqs = [resumed[i][name][resumed[i][name] != -1] for i in range(len(resumed)) for name in ("chosen", "rejected")]
    ids, is_padding = pad_right(seqs, -1)
    prompt_len = torch.tensor([resumed[i]["prompt_len"] for i in range(len(resumed)) for _ in range(2)])
    with torch.no_grad():
        expected = model_sequence_logprobs(net, ids, response_mask(ids, prompt_len, is_padding))
    stored = torch.stack([resumed[i][f"{name}_ref_logp"] for i in range(len(resumed)) for name in ("chosen", "rejected")])
    torch.testing.assert_close(stored, expected, atol=1e-4, rtol=1e-4)


def test_self_judge_greedy_judgements_equal_the_library_samplers(sampler):
    """The judge prompts (with the template's shared prefix) generated by the engine, K per candidate.
    Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    from self_rewarding_lm_pytorch.generation.backend import LibrarySampler
    from self_rewarding_lm_pytorch.judging.judges import Candidates

    net = tiny_llama(seed=10)
    prompts, responses = ["sort 3 1 2:", "sort 9 7 8:"], [" 1 2 3", " 7 9"]
    candidates = Candidates(prompts, [TOKENIZER.encode(p) for p in prompts], responses,
                            [TOKENIZER.encode(r) for r in responses])
    reward = RewardConfig(prompt_template="Rate this. {{ prompt }} -> {{ response }}. Score: ",
                          reward_regex_template="Score: {{ reward }}", score_range=(0, 9))

    def judge(backend):
        return SelfJudge(net, reward, tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                         num_judgements=2, max_new_tokens=6, temperature=0.0, eos_id=TOKENIZER.eos_id,
                         sampler=backend)(candidates, seed=1)

    ours, theirs = judge(sampler), judge(LibrarySampler())
    assert ours.raw_outputs == theirs.raw_outputs and len(ours.raw_outputs) == 2 and len(ours.raw_outputs[0]) == 2
    assert torch.equal(ours.scores.isnan(), theirs.scores.isnan())


def test_the_trainer_generates_every_stage_on_one_engine_with_the_weights_of_that_moment(sampler, tmp_path):
    """Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    net = tiny_llama(seed=8)
    task = SortDigitsTask(length=3, seed=8)
    prompts = task.prompts(16)
    sft = task.instruction_examples(8)
    stages = [
        SFTConfig(train_dataset=sft, batch_size=4, num_train_steps=1, learning_rate=1e-3),
        SelfPlayConfig(train_sft_dataset=sft, max_seq_len=32, num_train_steps=2, batch_size=4, learning_rate=1e-3),
        ExternalRewardDPOConfig(prompt_dataset=prompts, reward_fn=digit_count, num_preference_pairs=4,
                                prompt_batch_size=4, response_max_new_tokens=6, max_seq_len=32, temperature=1.0,
                                num_train_steps=2, batch_size=4, learning_rate=1e-3),
    ]
    trainer = SelfRewardingTrainer(net, finetune_configs=stages, tokenizer_encode=TOKENIZER.encode,
                                   tokenizer_decode=TOKENIZER.decode, eos_id=TOKENIZER.eos_id, checkpoints_folder=tmp_path,
                                   accelerate_kwargs=dict(cpu=True), generation_backend=sampler)
    assert trainer.sampler is sampler and "generation_backend" in trainer.fingerprint(2)
    assert "generation_backend" not in trainer.fingerprint(0)  # SFT generates nothing
    loads = sampler.num_weight_loads
    summaries = trainer()
    assert summaries[2]["pairs"] == 4
    # SPIN's answers from SFT's weights, stage 2's candidates from SPIN's trained weights: two loads
    assert sampler.num_weight_loads == loads + 2


def test_several_processes_are_refused_naming_the_field_and_the_fix(sampler):
    """Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    with pytest.raises(ValueError, match=r"SelfRewardingTrainer.generation_backend: the vLLM backend runs in one "
                                         r"process, but Accelerate runs 2.*tensor_parallel_size"):
        check_sampler_processes(sampler, 2, "SelfRewardingTrainer.generation_backend")
    check_sampler_processes(sampler, 1, "SelfRewardingTrainer.generation_backend")


class RecordingEngine:
    """Stands in for vllm.LLM to record the sleep / wake / load order."""

    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(f"sleep {level}")

    def wake_up(self, tags):
        self.calls.append(f"wake {'+'.join(tags)}")

    def collective_rpc(self, method, kwargs):
        self.calls.append(method)

    def reset_prefix_cache(self):
        self.calls.append("reset prefix cache")
        return True


def test_sleep_mode_frees_the_engine_while_training_and_reloads_the_weights_before_waking_the_cache():
    """Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    sampler = VLLMSampler(VLLMConfig(enable_sleep_mode=True))
    net = tiny_llama(seed=9)
    sampler.llm = engine = RecordingEngine()  # (sleep mode needs CUDA: the order of calls is checked here)
    sampler.prepare(net)
    sampler.prepare(net)
    sampler.release()
    sampler.release()  # already asleep: nothing more
    sampler.prepare(net)
    assert engine.calls == ["reload_weights", "reset prefix cache", "sleep 2", "wake weights", "reload_weights",
                            "wake kv_cache", "reset prefix cache"]


def test_an_engine_in_other_processes_gets_the_weights_through_a_temporary_hf_export():
    """tensor_parallel_size > 1 or a separate engine process: the weights go through an HF export, removed after.
    Its own engine, so in its own process (one in-process vLLM engine per process).
    Under 45 s idle (the vLLM step's 17 tests took 43 s in all on 2 idle cores)."""
    done = run_watched([sys.executable, str(Path(__file__).parents[1] / "scripts" / "vllm_export_check.py")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "export ok" in done.stdout
