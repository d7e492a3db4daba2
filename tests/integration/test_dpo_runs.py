import math

import pytest
import torch
from helpers import sort_pairs

from self_rewarding_lm_pytorch.storage.pair_store import DPODataset, PreferenceDataWriter
from self_rewarding_lm_pytorch.training.dpo import DPOTrainer
from self_rewarding_lm_pytorch.training.dpo_objective import DPO
from self_rewarding_lm_pytorch.training.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs


def stack(pairs, pad_id=-1):
    from self_rewarding_lm_pytorch.training.dpo_batches import DPOCollate

    return DPOCollate(pad_id)(pairs)


def test_one_policy_forward_per_batch_over_chosen_and_rejected(make_transformer):
    """Under 1 s idle."""
    model = make_transformer(num_tokens=128)
    dpo = DPO(model)
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    ref_calls = []
    dpo.ref_model.register_forward_hook(lambda module, args, output: ref_calls.append(args[0].shape))

    batch = stack(sort_pairs(4, seed=0))
    dpo(**batch)
    assert len(calls) == 1 and calls[0][0] == 8  # 4 chosen + 4 rejected rows in one call
    assert len(ref_calls) == 1 and ref_calls[0][0] == 8

    dpo(**batch, chosen_ref_logp=torch.zeros(4), rejected_ref_logp=torch.zeros(4))
    assert len(calls) == 2 and len(ref_calls) == 1  # stored reference log-probs: no reference forward

    dpo.train()
    assert model.training and not dpo.ref_model.training
    assert not any(p.requires_grad for p in dpo.ref_model.parameters())


def preference_accuracy(model, pairs):
    """How often the model itself gives the chosen response the higher log-prob."""
    prompt_len = torch.stack([p["prompt_len"] for p in pairs])
    chosen = reference_logprobs(model, [p["chosen"] for p in pairs], prompt_len, pad_id=-1)
    rejected = reference_logprobs(model, [p["rejected"] for p in pairs], prompt_len, pad_id=-1)
    return (chosen > rejected).float().mean().item()


def test_dpo_learns_to_prefer_the_chosen_responses_on_held_out_pairs(make_transformer):
    """About 3 s idle."""
    train, valid = sort_pairs(512, seed=0), sort_pairs(64, seed=1)
    model = make_transformer(num_tokens=128, dim=64, depth=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    trainer = DPOTrainer(
        model, train, valid_dataset=valid, batch_size=32, num_train_steps=40, learning_rate=3e-3,
        end_learning_rate=3e-4, beta=0.1, dropout=0.0, valid_every=20, accelerate_kwargs=dict(cpu=True),
    )
    assert trainer.ref_model is None  # no stored reference log-probs: computed up front, no copy held
    initial = trainer.valid_metrics()
    accuracy_before = preference_accuracy(model, valid)
    history = trainer()

    final = history[-1]
    assert [row["step"] for row in history] == list(range(1, 41))
    assert "valid_loss" in history[19] and "valid_loss" not in history[20]
    assert initial["rewards/accuracies"] == 0.0 and initial["rewards/margins"] == 0.0  # policy == reference
    assert final["valid_rewards/accuracies"] >= 0.9 and final["valid_rewards/margins"] > 1.0, final
    assert final["valid_loss"] < 0.5 * initial["loss"]
    assert preference_accuracy(model, valid) >= 0.9 > accuracy_before
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []


def test_dpo_dataset_on_disk_trains_on_stored_reference_logps_without_a_copy(make_transformer, tmp_path):
    """Under 1 s idle."""
    pad_id = 127  # a pad id of the folder's choosing, picked up by the trainer
    model = make_transformer(num_tokens=128, dim=64, depth=2)
    pairs = sort_pairs(96, seed=0)
    prompt_len = torch.stack([p["prompt_len"] for p in pairs])
    chosen_ref = reference_logprobs(model, [p["chosen"] for p in pairs], prompt_len, pad_id)
    rejected_ref = reference_logprobs(model, [p["rejected"] for p in pairs], prompt_len, pad_id)
    writer = PreferenceDataWriter(tmp_path, capacity=128, max_len=32, pad_id=pad_id, with_ref_logps=True)
    writer.append(
        chosen=[p["chosen"] for p in pairs], rejected=[p["rejected"] for p in pairs], prompt_len=prompt_len.tolist(),
        chosen_reward=[5.0] * 96, rejected_reward=[1.0] * 96, records=[{}] * 96,
        chosen_ref_logp=chosen_ref.tolist(), rejected_ref_logp=rejected_ref.tolist(),
    )
    dataset = DPODataset(tmp_path)

    trainer = DPOTrainer(model, dataset, batch_size=16, num_epochs=2, learning_rate=3e-3, end_learning_rate=3e-4,
                         dropout=0.0, accelerate_kwargs=dict(cpu=True))
    assert trainer.pad_id == pad_id
    assert trainer.ref_model is None and trainer.dpo.ref_model is None
    history = trainer()
    assert len(history) == 12  # 96 pairs / 16 = 6 steps per epoch, 2 epochs
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the stored reference is the start model
    assert history[-1]["rewards/accuracies"] > 0.8 and history[-1]["rewards/margins"] > 0


def test_early_stopper_ends_the_stage_on_the_best_weights(make_transformer):
    """Under 1 s idle."""
    snapshots = []

    def eval_fn(model):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return [3.0, 1.0, 2.0, 4.0][len(snapshots) - 1]  # best at the 2nd evaluation, then 2 bad ones

    model = make_transformer(num_tokens=128)
    stopper = EarlyStopper(eval_fn, mode="min", patience=2)
    history = DPOTrainer(
        model, sort_pairs(64, seed=0), batch_size=8, num_train_steps=100, learning_rate=1e-3, end_learning_rate=1e-4,
        early_stopper=stopper, early_stop_every=2, accelerate_kwargs=dict(cpu=True),
    )()
    assert len(history) == 8 and history[-1]["best_step"] == 4
    assert [row.get("early_stop_score") for row in history[1::2]] == [3.0, 1.0, 2.0, 4.0]
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][name]), name


def test_steps_follow_epochs_accumulation_and_the_step_cap(make_transformer, tmp_path):
    """Under 1 s idle."""
    data = sort_pairs(40, seed=0)
    common = dict(batch_size=4, grad_accum_steps=5, learning_rate=1e-3, end_learning_rate=1e-4, accelerate_kwargs=dict(cpu=True))
    trainer = DPOTrainer(make_transformer(num_tokens=128), data, num_epochs=2, checkpoint_every=2,
                         checkpoint_folder=tmp_path, checkpoint_prefix="iteration-0", **common)
    history = trainer()
    assert [row["step"] for row in history] == [1, 2, 3, 4]  # 10 batches per epoch / 5 per step, 2 epochs
    assert history[-1]["lr"] == pytest.approx(1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iteration-0-step-2.pt", "iteration-0-step-4.pt"]
    # both caps: whichever ends first
    assert DPOTrainer(make_transformer(num_tokens=128), data, num_epochs=2, num_train_steps=3, **common).num_train_steps == 3
