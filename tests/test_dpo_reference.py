"""DPO on external pairs with the reference log-probs computed once before training (dpo_reference.py)."""

import copy

import torch

from self_rewarding_lm_pytorch.dpo import DPOTrainer
from self_rewarding_lm_pytorch.dpo_reference import with_reference_logprobs

from test_dpo import sort_pairs


def train(model, pairs, precompute, steps=3, **config):
    torch.manual_seed(1)  # the same shuffled batches for both trainers
    trainer = DPOTrainer(model, pairs, batch_size=16, num_train_steps=steps, learning_rate=1e-3, end_learning_rate=1e-4,
                         dropout=0.0, precompute_reference=precompute, accelerate_kwargs=dict(cpu=True), **config)
    return trainer, trainer.train()


def test_precomputed_reference_trains_exactly_like_the_live_one_and_holds_no_model(make_transformer):
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


def test_precomputed_values_are_the_model_log_probs_at_the_start(make_transformer):
    from accelerate import Accelerator

    pairs = sort_pairs(10, seed=0)
    model = make_transformer(num_tokens=128, dim=64, depth=2)
    scored = with_reference_logprobs(model, pairs, accelerator=Accelerator(cpu=True), pad_id=-1, batch_size=4)
    assert len(scored) == 10 and scored.has_ref_logps
    with torch.no_grad():
        model.eval()
        for i in (0, 7):
            seq = pairs[i]["chosen"][None]
            logits = model(seq)
            token_logps = logits[:, :-1].log_softmax(-1).gather(-1, seq[:, 1:, None])[0, :, 0]
            by_hand = token_logps[int(pairs[i]["prompt_len"]) - 1 :].sum()
            assert abs(float(scored[i]["chosen_ref_logp"]) - by_hand.item()) < 1e-4
            assert torch.equal(scored[i]["rejected"], pairs[i]["rejected"])
