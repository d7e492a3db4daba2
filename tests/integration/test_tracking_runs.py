"""Trackers: the orchestrator opens and closes them; each stage logs under its own name at a growing global step."""

import pytest
import torch

pytest.importorskip("tensorboard", reason="the tracker test reads TensorBoard event files (the [tensorboard] extra)")

from conftest import tiny_transformer  # noqa: E402
from helpers import checksum, decode_tokens, encode_str, mock_sft_dataset, small_dpo, small_pairs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from self_rewarding_lm_pytorch import ExternalRewardDPOConfig, SelfPlayConfig, SelfRewardingTrainer, SFTConfig  # noqa: E402


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    scalars = {}
    for path in folder.rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(values) for tag, values in scalars.items()}


def test_tensorboard_gets_every_stage_under_its_name_at_growing_steps(tmp_path):
    """About 1 s idle."""
    torch.manual_seed(0)
    stages = [
        SFTConfig(train_dataset=mock_sft_dataset(8), batch_size=4, grad_accum_steps=1, num_train_steps=2,
                  learning_rate=1e-4, end_learning_rate=1e-5),
        ExternalRewardDPOConfig(prompt_dataset=["ab", "cd", "ef", "gh"], reward_fn=checksum, **small_pairs(),
                                **small_dpo()),
        SelfPlayConfig(train_sft_dataset=mock_sft_dataset(4, seq_len=8), max_seq_len=12, num_iterations=2,
                       num_train_steps=2, batch_size=2),
    ]
    evaluations = iter([1.5, 2.5, 3.5])
    # the same initial weights for both runs: stage 0's fingerprint includes them
    model = lambda: (torch.manual_seed(1), tiny_transformer(num_tokens=256, max_seq_len=64))[1]  # noqa: E731
    trainer = SelfRewardingTrainer(
        model(), finetune_configs=stages, tokenizer_encode=encode_str,
        tokenizer_decode=decode_tokens, checkpoints_folder=tmp_path, accelerate_kwargs=dict(cpu=True),
        evaluate=lambda model: dict(score=next(evaluations)), log_with="tensorboard", project_name="run",
    )
    trainer()
    assert trainer.accelerator.trackers == []  # closed

    scalars = read_scalars(tmp_path / "logs" / "run")
    steps = lambda tag: [step for step, _ in scalars[tag]]  # noqa: E731
    assert steps("stage-00-sft/loss") == [1, 2]
    assert scalars["stage-00-sft/evaluate/score"] == [(2, 1.5)]
    # stage 1 starts after stage 0: its pair statistics at its step 0, its DPO steps after them
    assert steps("stage-01-external-reward-dpo/pairs/pairs_made") == [3]
    assert scalars["stage-01-external-reward-dpo/pairs/pairs_made"][0][1] == 4
    assert steps("stage-01-external-reward-dpo/loss") == [4, 5]
    assert scalars["stage-01-external-reward-dpo/evaluate/score"] == [(5, 2.5)]
    # SPIN: two iterations of two steps each, one after the other
    assert steps("stage-02-spin/loss") == [7, 8, 9, 10]
    assert scalars["stage-02-spin/evaluate/score"] == [(10, 3.5)]

    # a resumed run goes on from where the finished stages left the global step
    resumed = SelfRewardingTrainer(
        model(), finetune_configs=stages, tokenizer_encode=encode_str,
        tokenizer_decode=decode_tokens, checkpoints_folder=tmp_path, accelerate_kwargs=dict(cpu=True),
    )
    resumed()
    assert resumed.next_step == trainer.next_step == 11
