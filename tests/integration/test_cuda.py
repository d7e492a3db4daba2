"""The library on one CUDA GPU: what the CPU suite cannot show. Skipped where torch sees no GPU (CI has none);
run on a GPU machine with `python -m pytest -m cuda tests/integration/test_cuda.py`.

TF32 is off for these tests: with it, "cached == recomputed" and "GPU == CPU" would be questions of rounding
(matmuls in 10-bit mantissas), not of the code."""

import os

# cuBLAS is deterministic only with a fixed workspace; must be set before CUDA starts (the resume test needs it)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest
import torch
from conftest import Crash, crash_in_stage, tiny_transformer

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    RewardConfig,
    SelfPlayConfig,
    SelfRewardDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
    sample,
)
from self_rewarding_lm_pytorch.data.datasets import pad_right
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler
from self_rewarding_lm_pytorch.generation.sampling import top_p
from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.logprobs import model_sequence_logprobs, response_mask

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)"),
]

TOKENIZER = CharTokenizer()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state (the first Accelerator's precision and device stick): start clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def full_precision_matmuls():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def random_prompts(lengths, num_tokens=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, num_tokens, (n,), generator=generator) for n in lengths]


def gpu_model(seed=1, **kwargs):
    torch.manual_seed(seed)
    return tiny_transformer(**kwargs).cuda()


@pytest.mark.parametrize("decoder_kwargs", [dict(), dict(rotary_pos_emb=True)], ids=["absolute", "rotary"])
def test_cached_equals_recomputed_and_batch_equals_alone_on_the_gpu(decoder_kwargs):
    """Not timed: it needs a CUDA GPU, which this project's machines lend only sometimes."""
    net = gpu_model(max_seq_len=40, depth=2, **decoder_kwargs)
    prompts = random_prompts((3, 9, 5, 12))  # host tensors: sample moves them to the model's device

    cached = sample(net, prompts, seq_len=40, temperature=0.0)
    recomputed = sample(net, prompts, seq_len=40, temperature=0.0, cache_kv=False)
    assert cached.device.type == "cuda" and torch.equal(cached, recomputed)
    for i, prompt in enumerate(prompts):  # left padding does not leak into a row's answer
        alone = sample(net, [prompt], seq_len=40, temperature=0.0)[0]
        assert torch.equal(cached[i, : len(alone)], alone)


def test_seeded_sampling_on_the_gpu_is_reproducible_with_and_without_the_cache():
    """Not timed: it needs a CUDA GPU, which this project's machines lend only sometimes."""
    net = gpu_model(seed=11, depth=2, rotary_pos_emb=True)
    prompts = random_prompts((3, 9, 5))
    kwargs = dict(seq_len=30, filter_fn=top_p, filter_kwargs=dict(thres=0.95), num_samples=3)
    a = sample(net, prompts, generator=5, **kwargs)
    assert torch.equal(a, sample(net, prompts, generator=torch.Generator("cuda").manual_seed(5), **kwargs))
    assert torch.equal(a, sample(net, prompts, generator=5, cache_kv=False, **kwargs))
    assert not torch.equal(a, sample(net, prompts, generator=6, **kwargs))


def test_log_probs_on_the_gpu_equal_the_cpu_ones():
    """Not timed: it needs a CUDA GPU, which this project's machines lend only sometimes."""
    net = gpu_model(seed=3, depth=2)
    seqs = random_prompts((7, 12, 4), seed=1)
    ids, is_padding = pad_right(seqs, -1)
    mask = response_mask(ids, torch.tensor([2, 5, 1]), is_padding)
    with torch.no_grad():
        on_gpu = model_sequence_logprobs(net, ids.cuda(), mask.cuda())
        on_cpu = model_sequence_logprobs(net.cpu(), ids, mask)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-5, rtol=1e-5)


def checksum(prompt: str, response: str) -> float:
    """An external reward that tells an untrained model's answers apart."""
    return float(sum(map(ord, response)) % 7)


def plan(task):
    dpo = dict(batch_size=4, num_train_steps=2, learning_rate=1e-4, end_learning_rate=1e-5)
    pairs = dict(num_preference_pairs=4, prompt_batch_size=4, response_max_new_tokens=6, temperature=1.0)
    return [
        SFTConfig(train_dataset=task.instruction_examples(32), batch_size=8, learning_rate=1e-3, end_learning_rate=1e-4),
        ExternalRewardDPOConfig(prompt_dataset=task.prompts(32), reward_fn=checksum, **pairs, **dpo),
        SelfPlayConfig(train_sft_dataset=task.instruction_examples(8), max_seq_len=24, **dpo),
        SelfRewardDPOConfig(prompt_dataset=task.prompts(32), num_judgements=1, judge_max_new_tokens=6,
                            judge_temperature=1.0, **pairs, **dpo),
    ]


def run_plan(folder, mixed_precision="no", evaluate=None):
    torch.manual_seed(0)
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    snapshots = []

    def snapshot(m):
        snapshots.append({k: v.detach().float().cpu().clone() for k, v in m.state_dict().items()})
        return evaluate(m) if evaluate else {}

    trainer = SelfRewardingTrainer(
        model, finetune_configs=plan(SortDigitsTask(length=3, seed=1)), tokenizer_encode=TOKENIZER.encode,
        tokenizer_decode=TOKENIZER.decode, eos_id=TOKENIZER.eos_id, checkpoints_folder=folder, seed=3,
        # a judge that parses every judgement (its "score" is a checksum of the text): the self-reward stage makes
        # pairs untrained
        self_reward_prompt_config=RewardConfig("{{ prompt }}|{{ response }}|", parse_reward=lambda text: checksum("", text)),
        accelerate_kwargs=dict(mixed_precision=mixed_precision), evaluate=snapshot,
    )
    return trainer, trainer(), model, snapshots


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_a_four_stage_plan_trains_on_one_gpu(tmp_path, mixed_precision):
    """Not timed: it needs a CUDA GPU, which this project's machines lend only sometimes."""
    trainer, summaries, model, snapshots = run_plan(tmp_path, mixed_precision)

    assert trainer.accelerator.device.type == "cuda" and next(model.parameters()).device.type == "cuda"
    assert [s["kind"] for s in summaries] == ["sft", "external-reward-dpo", "spin", "self-reward-dpo"]
    for before, after in zip(snapshots, snapshots[1:]):  # every stage moved the weights, and none made them NaN
        assert any(not torch.equal(before[k], after[k]) for k in before)
        assert all(torch.isfinite(v).all() for v in after.values())
    # the saved weights load into a model on the CPU and give its logits (Accelerate leaves the trained model's
    # forward under bf16 autocast when asked for bf16: its logits then agree to bf16's precision)
    on_cpu = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    load_checkpoint(on_cpu, tmp_path / "stage-03-self-reward-dpo.pt")
    ids = torch.randint(0, TOKENIZER.num_tokens, (2, 10))
    with torch.no_grad():
        tolerance = dict(atol=1e-4, rtol=1e-4) if mixed_precision == "no" else dict(atol=0.1, rtol=0.05)
        torch.testing.assert_close(on_cpu(ids), model.eval()(ids.cuda()).float().cpu(), **tolerance)

    # the stored reference log-probs are the generating model's own (stage 1 starts from the SFT checkpoint)
    reference = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    load_checkpoint(reference, tmp_path / "stage-00-sft.pt")
    pairs = DPODataset(next(tmp_path.glob("stage-01-*.pairs")))
    seqs = [pairs[i][name][pairs[i][name] != -1] for i in range(len(pairs)) for name in ("chosen", "rejected")]
    ids, is_padding = pad_right(seqs, -1)
    prompt_len = torch.tensor([pairs[i]["prompt_len"] for i in range(len(pairs)) for _ in range(2)])
    with torch.no_grad():
        expected = model_sequence_logprobs(reference.eval(), ids, response_mask(ids, prompt_len, is_padding))
    stored = torch.stack([pairs[i][f"{name}_ref_logp"] for i in range(len(pairs)) for name in ("chosen", "rejected")])
    # bf16 autocast computes them in bf16 (8-bit mantissa): log-probs of ~6 tokens agree to a few hundredths
    torch.testing.assert_close(stored, expected, atol=1e-4 if mixed_precision == "no" else 0.15, rtol=0)


class DeviceRecordingSampler(LibrarySampler):
    """The library's sampler, noting where the model's weights are at each call."""

    def __init__(self):
        self.devices = []

    def __call__(self, net, *args, **kwargs):
        self.devices.append(next(net.parameters()).device.type)
        return super().__call__(net, *args, **kwargs)


def test_a_plan_that_generates_before_it_trains_generates_on_the_gpu(tmp_path):
    """Accelerate moves the model when a stage first trains; a first stage that makes pairs (or SPIN answers) must
    not generate on the host before that.
    Not timed: it needs a CUDA GPU, which this project's machines lend only sometimes."""
    task = SortDigitsTask(length=3, seed=1)
    sampler = DeviceRecordingSampler()
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    stages = plan(task)[1:3]  # external-reward DPO, then SPIN
    SelfRewardingTrainer(model, finetune_configs=stages, tokenizer_encode=TOKENIZER.encode,
                         tokenizer_decode=TOKENIZER.decode, eos_id=TOKENIZER.eos_id, checkpoints_folder=tmp_path,
                         generation_backend=sampler)()
    assert sampler.devices and set(sampler.devices) == {"cuda"}


def test_an_interrupted_gpu_run_resumes_to_the_same_weights(tmp_path):
    """Not timed: it needs a CUDA GPU, which this project's machines lend only sometimes."""
    torch.use_deterministic_algorithms(True)
    try:
        _, _, _, whole = run_plan(tmp_path / "whole")
        with pytest.raises(Crash):
            run_plan(tmp_path / "resumed", evaluate=crash_in_stage(3))
        _, summaries, _, _ = run_plan(tmp_path / "resumed")
    finally:
        torch.use_deterministic_algorithms(False)
    assert [s.get("resumed", False) for s in summaries] == [True, True, False, False]
    for index, name in enumerate(["stage-00-sft.pt", "stage-01-external-reward-dpo.pt", "stage-02-spin.pt",
                                  "stage-03-self-reward-dpo.pt"]):
        resumed = torch.load(tmp_path / "resumed" / name, weights_only=True)["model"]
        assert all(torch.equal(whole[index][k], resumed[k].float().cpu()) for k in resumed), name


def test_the_experiment_runner_trains_and_measures_on_the_gpu(tmp_path, monkeypatch):
    """`ExperimentRunner(accelerate_kwargs={})` (examples/self_improvement.py --gpu): the seed model and each arm's
    iteration train on the GPU, and measurement runs on the model where it is (no CPU/GPU mix-up in sampling, judging
    or the judge-training data). Not timed: it needs a CUDA GPU, which this project's machines lend only sometimes."""
    from dataclasses import replace

    import self_rewarding_lm_pytorch.experiment.runner as experiment
    from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings
    from self_rewarding_lm_pytorch.experiment.tasks import sort_digits_task

    measured_on = []
    measure = experiment.measure

    def recording_measure(model, *args):
        measured_on.append(next(model.parameters()).device.type)
        return measure(model, *args)

    monkeypatch.setattr(experiment, "measure", recording_measure)
    settings = ExperimentSettings(
        seeds=(0,), iterations=1, num_instruction_examples=64, sft_epochs=1, num_eft_prompts=16,
        eft_samples_per_prompt=2, prompts_per_iteration=32, num_preference_pairs=8, num_eval_prompts=16,
        num_judge_eval_prompts=8)
    arms = [arm for arm in DEFAULT_ARMS if arm.name in ("self_judge", "random")]
    # both labels occur for the judge's training however little the model has learned: a checker by the characters
    task = replace(sort_digits_task(dim=32, depth=1), checker=lambda prompt, response: sum(map(ord, response)) % 2 == 0)
    rows = experiment.ExperimentRunner(task, settings, arms, tmp_path, show_progress=False, accelerate_kwargs={}).run()
    assert [(r["arm"], r["iteration"]) for r in rows] == [("sft", 0), ("self_judge", 1), ("random", 1)]
    assert measured_on == ["cuda"] * 3
    assert all(0 <= r["exact_match"] <= 1 for r in rows)
