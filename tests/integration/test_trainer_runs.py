"""The orchestrator, and the original README's four examples with sizes shrunk."""

import pytest
import torch
from conftest import Crash, crash_in_stage, tiny_transformer
from helpers import checksum, decode_tokens, encode_str, mock_sft_dataset, small_dpo, small_pairs

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    RewardConfig,
    SelfPlayConfig,
    SelfRewardDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
    SPINTrainer,
    create_mock_dataset,
)
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError
from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

TOKENIZER = CharTokenizer()


# the README's tokenizer functions, verbatim


def test_readme_default_plan_ends_in_the_bounded_judge_error(tmp_path):
    """README example 1: the paper's plan from a dict. An untrained model cannot judge, so pair generation
    must stop with the clear error (the original retried forever). Under 1 s idle."""
    torch.manual_seed(0)
    transformer = tiny_transformer(num_tokens=256, max_seq_len=2400)
    trainer = SelfRewardingTrainer(
        transformer,
        finetune_configs=dict(
            train_sft_dataset=mock_sft_dataset(),
            self_reward_prompt_dataset=create_mock_dataset(100, lambda: "mock prompt"),
            dpo_num_train_steps=1000,
            sft_config=dict(batch_size=8),
            self_reward_config=dict(prompt_batch_size=2, num_candidate_responses=2, num_judgements=1,
                                    response_max_new_tokens=4, judge_max_new_tokens=8, fail_fast_after_prompts=2),
        ),
        tokenizer_decode=decode_tokens,
        tokenizer_encode=encode_str,
        accelerate_kwargs=dict(cpu=True),
        checkpoints_folder=tmp_path,
    )
    with pytest.raises(PairGenerationError, match="never produced a score .*'Score: <n>'") as error:
        trainer(overwrite_checkpoints=True)
    assert error.value.stats.judgements > 0 and error.value.num_pairs == 0
    assert (tmp_path / "stage-00-sft.pt").is_file()  # the SFT stage finished and was saved first


def test_readme_spin_alone_trains_the_model(tmp_path):
    """Under 1 s idle."""
    torch.manual_seed(0)
    transformer = tiny_transformer(num_tokens=256, max_seq_len=64, depth=2)
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    spin_trainer = SPINTrainer(
        transformer,
        max_seq_len=16,
        train_sft_dataset=mock_sft_dataset(),
        checkpoint_every=1,
        spin_kwargs=dict(λ=0.1),
        num_train_steps=2,
        learning_rate=1e-4,
        checkpoint_folder=tmp_path,
        accelerate_kwargs=dict(cpu=True),
    )
    spin_trainer()
    changed = [k for k, v in transformer.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    # the state at each step (resumable), and θ0's pairs: a resumed iteration no longer has θ0 to make them again
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iteration-0-step-1.pt", "iteration-0-step-2.pt", "iteration-0-train-pairs.pt"]


def test_readme_custom_reward_prompt_is_the_one_used(tmp_path):
    """Under 1 s idle."""
    torch.manual_seed(0)
    transformer = tiny_transformer(num_tokens=256, max_seq_len=256)
    reward_config = RewardConfig(
        prompt_template="""
        Pretty please rate the following user prompt and response
        User: {{ prompt }}
        Response: {{ response }}

        Format your score as follows:
        Rating: <rating as integer from 0 - 10>
        """,
        reward_regex_template="""
        Rating: {{ reward }}
        """,
    )
    stage = SelfRewardDPOConfig(
        prompt_dataset=create_mock_dataset(8, lambda: "mock prompt"), num_judgements=1, judge_max_new_tokens=4,
        fail_fast_after_prompts=4, **small_pairs(), **small_dpo(),
    )
    trainer = SelfRewardingTrainer(
        transformer, finetune_configs=[stage], tokenizer_decode=decode_tokens, tokenizer_encode=encode_str,
        self_reward_prompt_config=reward_config, accelerate_kwargs=dict(cpu=True), checkpoints_folder=tmp_path,
    )
    with pytest.raises(PairGenerationError, match="never produced a score"):
        trainer()
    assert trainer.reward_config is reward_config


def test_readme_interleaved_stages_run_in_order_and_each_changes_the_model(tmp_path):
    """README example 4: SFT, SPIN, external-reward DPO, self-reward DPO, SPIN, self-reward DPO. The judge here
    parses every answer (its 'score' is the answer's length), so the self-reward stages make pairs untrained.
    About 2 s idle."""
    torch.manual_seed(0)
    task = SortDigitsTask(length=3, seed=0)
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    any_answer = RewardConfig("{{ prompt }}|{{ response }}|", parse_reward=lambda text: float(len(text)))
    spin = SelfPlayConfig(train_sft_dataset=task.instruction_examples(8), max_seq_len=24, **small_dpo())
    self_reward = SelfRewardDPOConfig(prompt_dataset=task.prompts(32), num_judgements=1, judge_max_new_tokens=6,
                                      temperature=1.0, judge_temperature=1.0, **small_pairs(), **small_dpo())
    stages = [
        SFTConfig(train_dataset=task.instruction_examples(32), batch_size=8, learning_rate=1e-3, end_learning_rate=1e-4),
        spin,
        ExternalRewardDPOConfig(prompt_dataset=task.prompts(32), reward_fn=checksum, temperature=1.0,
                                **small_pairs(num_preference_pairs=2), **small_dpo()),
        self_reward,
        spin,
        self_reward,
    ]
    snapshots = []
    trainer = SelfRewardingTrainer(
        model, finetune_configs=stages, tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
        self_reward_prompt_config=any_answer, eos_id=TOKENIZER.eos_id, accelerate_kwargs=dict(cpu=True),
        checkpoints_folder=tmp_path,
        evaluate=lambda m: snapshots.append({k: v.clone() for k, v in m.state_dict().items()}) or {},
    )
    summaries = trainer()
    kinds = ["sft", "spin", "external-reward-dpo", "self-reward-dpo", "spin", "self-reward-dpo"]
    assert [s["kind"] for s in summaries] == kinds
    assert [p.name for p in sorted(tmp_path.glob("stage-*.pt"))] == [f"stage-{i:02d}-{k}.pt" for i, k in enumerate(kinds)]
    # stages never share files: each preference stage has its own pairs folder
    assert len(list(tmp_path.glob("stage-*.pairs"))) == 3
    for before, after in zip(snapshots, snapshots[1:]):
        assert any(not torch.equal(before[k], after[k]) for k in before)


def resumable_plan(task):
    return [
        SFTConfig(train_dataset=task.instruction_examples(32), batch_size=8, learning_rate=1e-3, end_learning_rate=1e-4,
                  dropout=0.1),
        ExternalRewardDPOConfig(prompt_dataset=task.prompts(32), reward_fn=checksum, temperature=1.0,
                                **small_pairs(), **small_dpo(dropout=0.1)),
        SelfPlayConfig(train_sft_dataset=task.instruction_examples(8), max_seq_len=24, **small_dpo()),
    ]


def test_interrupted_run_resumes_to_the_same_checkpoints(tmp_path):
    """About 2 s idle."""
    task = SortDigitsTask(length=3, seed=1)
    plan = resumable_plan(task)

    def run(folder, evaluate=None):
        torch.manual_seed(0)
        model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
        trainer = SelfRewardingTrainer(model, finetune_configs=plan, tokenizer_encode=TOKENIZER.encode,
                                       tokenizer_decode=TOKENIZER.decode, eos_id=0, accelerate_kwargs=dict(cpu=True),
                                       checkpoints_folder=folder, seed=3, evaluate=evaluate)
        return trainer()

    run(tmp_path / "whole")

    with pytest.raises(Crash):
        run(tmp_path / "resumed", evaluate=crash_in_stage(3))
    assert not (tmp_path / "resumed" / "stage-02-spin.pt").exists()
    summaries = run(tmp_path / "resumed")
    assert [s.get("resumed", False) for s in summaries] == [True, True, False]

    for name in ("stage-00-sft.pt", "stage-01-external-reward-dpo.pt", "stage-02-spin.pt"):
        whole = torch.load(tmp_path / "whole" / name, weights_only=True)["model"]
        resumed = torch.load(tmp_path / "resumed" / name, weights_only=True)["model"]
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), name


def test_checkpoints_of_another_plan_are_refused_and_overwrite_clears_them(tmp_path, monkeypatch):
    """Under 1 s idle."""
    task = SortDigitsTask(length=3, seed=2)
    make = lambda lr: SelfRewardingTrainer(
        tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48),
        finetune_configs=[SFTConfig(train_dataset=task.instruction_examples(8), batch_size=8, learning_rate=lr,
                                    end_learning_rate=lr / 10)],
        tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode, accelerate_kwargs=dict(cpu=True),
        checkpoints_folder=tmp_path,
    )
    (tmp_path / "notes.txt").write_text("not ours")
    make(1e-3)()
    with pytest.raises(ValueError, match="different plan"):
        make(2e-3)()
    monkeypatch.setenv("SELF_REWARDING_CLEAR_CHECKPOINTS", "1")
    make(2e-3)()
    assert (tmp_path / "notes.txt").read_text() == "not ours"  # only the trainer's own files are cleared
    assert load_checkpoint(tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48), tmp_path / "stage-00-sft.pt")


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state: the precision of the first Accelerator sticks, so start clean and
    leave clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_mixed_precision_pipeline(tmp_path, fresh_accelerate_state):
    """Accelerate's bf16 autocast (CPU here): sampling, judging, reference log-probs and training all run under it.
    About 1 s idle."""
    task = SortDigitsTask(length=3, seed=4)
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = resumable_plan(task)
    trainer = SelfRewardingTrainer(model, finetune_configs=plan, tokenizer_encode=TOKENIZER.encode,
                                   tokenizer_decode=TOKENIZER.decode, eos_id=0, checkpoints_folder=tmp_path,
                                   accelerate_kwargs=dict(cpu=True, mixed_precision="bf16"))
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer()
    after = torch.load(tmp_path / "stage-02-spin.pt", weights_only=True)["model"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in after.values())  # fp32 master weights
    assert all(not torch.equal(before[k], after[k]) for k in before)
