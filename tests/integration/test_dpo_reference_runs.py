"""DPO on external pairs with the reference log-probs computed once before training (training/reference.py)."""

import copy

import torch
from helpers import sort_pairs

from self_rewarding_lm_pytorch.training.dpo import DPOTrainer


def train(model, pairs, precompute, steps=3, **config):
    torch.manual_seed(1)  # the same shuffled batches for both trainers
    trainer = DPOTrainer(model, pairs, batch_size=16, num_train_steps=steps, learning_rate=1e-3, end_learning_rate=1e-4,
                         dropout=0.0, precompute_reference=precompute, accelerate_kwargs=dict(cpu=True), **config)
    return trainer, trainer.train()


def test_precomputed_reference_trains_exactly_like_the_live_one_and_holds_no_model(make_transformer):
    """Under 1 s idle."""
    pairs, valid = sort_pairs(48, seed=0), sort_pairs(16, seed=1)
    live_model = make_transformer(num_tokens=128, dim=64, depth=2)
    precomputed_model = copy.deepcopy(live_model)

    live, live_history = train(live_model, pairs, precompute=False, valid_dataset=valid)
    assert live.ref_model is not None
    precomputed, history = train(precomputed_model, pairs, precompute=None, valid_dataset=valid)  # the default
    assert precomputed.ref_model is None and precomputed.dpo.ref_model is None

    # step 1: policy == reference, so the loss is log 2 in both; later steps: the same batches, the same losses
    assert abs(history[0]["loss"] - 0.6931) < 1e-3
    for a, b in zip(live_history, history):
        for key in ("loss", "rewards/margins", "valid_loss"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-5, (key, a[key], b[key])
    for (name, a), b in zip(live_model.named_parameters(), precomputed_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def with_rewards(pairs):
    """Pairs with the scores pair generation stores, so that margin_weighted_loss has margins to weight by."""
    return [dict(p, chosen_reward=float(2 + i % 3), rejected_reward=1.0) for i, p in enumerate(pairs)]


def test_precomputed_reference_resumes_inside_the_stage_with_margin_weights(make_transformer, tmp_path):
    """A killed run resumes from its step file: the precomputed reference (the model given at construction, the
    one the stage started from) and margin-weighted losses give the uninterrupted run's rows, weights and steps.
    Under 1 s idle."""
    from accelerate import Accelerator

    from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger

    pairs = with_rewards(sort_pairs(48, seed=0))  # 3 batches an epoch: step 2's save is inside an epoch
    start = make_transformer(num_tokens=128, dim=64, depth=2)
    settings = dict(steps=4, checkpoint_every=2, margin_weighted_loss=True)

    whole_model = copy.deepcopy(start)
    _, whole = train(whole_model, pairs, precompute=True, checkpoint_folder=tmp_path / "whole", **settings)

    killed_model = copy.deepcopy(start)
    train(killed_model, pairs, precompute=True, checkpoint_folder=tmp_path / "killed", **settings)
    (tmp_path / "killed" / "dpo-step-4.pt").unlink()  # killed after step 3: the last save is step 2's

    resumed_model = copy.deepcopy(start)  # the rerun builds the stage from the model it started from
    torch.manual_seed(1)
    trainer = DPOTrainer(resumed_model, pairs, batch_size=16, num_train_steps=4, learning_rate=1e-3,
                         end_learning_rate=1e-4, dropout=0.0, precompute_reference=True, margin_weighted_loss=True,
                         checkpoint_every=2, checkpoint_folder=tmp_path / "killed", accelerate_kwargs=dict(cpu=True),
                         logger=MetricsLogger(Accelerator(cpu=True), "dpo", start_step=10))
    assert trainer.ref_model is None
    resumed = trainer.train()
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(whole, resumed):
        assert abs(a["loss"] - b["loss"]) < 1e-6, (a, b)
    for (name, a), b in zip(whole_model.named_parameters(), resumed_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert trainer.logger.last_step == 14  # the trackers' global step goes on from the stage's start + 4

    # a rerun of the finished loop logs nothing new, yet its rows count: the next stage's steps come after them
    finished = DPOTrainer(copy.deepcopy(start), pairs, batch_size=16, num_train_steps=4, learning_rate=1e-3,
                          end_learning_rate=1e-4, dropout=0.0, precompute_reference=True, margin_weighted_loss=True,
                          checkpoint_every=2, checkpoint_folder=tmp_path / "whole", accelerate_kwargs=dict(cpu=True),
                          logger=MetricsLogger(Accelerator(cpu=True), "dpo", start_step=10))
    assert [r["step"] for r in finished.train()] == [1, 2, 3, 4] and finished.logger.last_step == 14
