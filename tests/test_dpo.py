import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from self_rewarding_lm_pytorch.training.dpo import DPOConfig, DPOTrainer
from self_rewarding_lm_pytorch.training.dpo_objective import DPO
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs
from self_rewarding_lm_pytorch.training.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset, PreferenceDataWriter
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, make_prompt, solve


class Bigram(nn.Module):
    """Logits at t depend on token t only: log p(b | a) = log_softmax(embed.weight)[a, b], readable by hand."""

    def __init__(self, num_tokens=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(num_tokens, num_tokens)

    def forward(self, ids):
        return self.embed(ids)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_and_metrics_by_hand(reduction):
    policy, ref = Bigram(seed=0), Bigram(seed=1)
    dpo = DPO(policy, beta=0.5, ref_model=ref, logp_reduction=reduction, nll_weight=0.3)
    # prompt [1, 2]; chosen response [3, 4], rejected response [5] (its row is shorter: padded inside DPO)
    chosen, rejected, prompt_len = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 5]]), torch.tensor([2])
    loss, metrics = dpo(chosen, rejected, prompt_len)

    # token t is scored by the logits at t - 1: chosen = log p(3|2) + log p(4|3), rejected = log p(5|2)
    with torch.no_grad():
        lp, lr = policy.embed.weight.log_softmax(-1), ref.embed.weight.log_softmax(-1)
        count_chosen, count_rejected = (2, 1) if reduction == "mean" else (1, 1)
        pc, pr = (lp[2, 3] + lp[3, 4]) / count_chosen, lp[2, 5] / count_rejected
        rc, rr = (lr[2, 3] + lr[3, 4]) / count_chosen, lr[2, 5] / count_rejected
        nll = -(lp[2, 3] + lp[3, 4]) / 2  # per token, whatever the reduction
        expected = -F.logsigmoid(0.5 * ((pc - rc) - (pr - rr))) + 0.3 * nll

    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert metrics["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.5 * (pc - rc).item(), abs=1e-6)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.5 * (pr - rr).item(), abs=1e-6)
    assert metrics["rewards/margins"].item() == pytest.approx(0.5 * ((pc - rc) - (pr - rr)).item(), abs=1e-6)
    assert metrics["rewards/accuracies"].item() == float((pc - rc) > (pr - rr))
    assert metrics["logps/chosen"].item() == pytest.approx(pc.item(), abs=1e-6)
    assert metrics["logps/rejected"].item() == pytest.approx(pr.item(), abs=1e-6)
    assert metrics["nll"].item() == pytest.approx(nll.item(), abs=1e-6)
    assert all(not v.requires_grad for v in metrics.values())

    loss.backward()
    assert policy.embed.weight.grad is not None and ref.embed.weight.grad is None


def test_no_nll_metric_without_nll_weight():
    _, metrics = DPO(Bigram())(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 4]]), torch.tensor([2]))
    assert "nll" not in metrics


def sort_pairs(n, seed, length=3, tokenizer=CharTokenizer()):
    """chosen: the digits sorted; rejected: sorted the wrong way round (a repeated digit set gives a tie, kept)."""
    rng, eos = random.Random(seed), torch.tensor([tokenizer.eos_id])
    pairs = []
    for _ in range(n):
        digits = [rng.randint(1, 9) for _ in range(length)]
        prompt = tokenizer.encode(make_prompt(digits))
        wrong = " " + " ".join(map(str, sorted(digits, reverse=True)))
        pairs.append(dict(
            chosen=torch.cat([prompt, tokenizer.encode(solve(digits)), eos]),
            rejected=torch.cat([prompt, tokenizer.encode(wrong), eos]),
            prompt_len=torch.tensor(len(prompt)),
        ))
    return pairs


def stack(pairs, pad_id=-1):
    from self_rewarding_lm_pytorch.training.dpo_batches import DPOCollate

    return DPOCollate(pad_id)(pairs)


def test_precomputed_and_live_reference_give_the_same_loss(make_transformer):
    model, reference = make_transformer(num_tokens=128).eval(), make_transformer(num_tokens=128).eval()  # same weights
    batch = stack(sort_pairs(6, seed=0))
    seqs = [s[s != -1] for s in torch.cat([batch["chosen"], batch["rejected"]])]
    ref = reference_logprobs(reference, seqs, batch["prompt_len"].repeat(2), pad_id=-1)  # what pair generation stores

    with torch.no_grad():  # move the policy away from the reference, so the reference matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    live, precomputed = DPO(model, 0.5, ref_model=reference), DPO(model, 0.5, precomputed_reference=True)
    assert precomputed.ref_model is None

    live_loss, live_metrics = live(**batch)
    pre_loss, pre_metrics = precomputed(**batch, chosen_ref_logp=ref[:6], rejected_ref_logp=ref[6:])
    assert live_loss.item() == pytest.approx(pre_loss.item(), abs=1e-6)
    assert live_metrics["rewards/margins"].item() == pytest.approx(pre_metrics["rewards/margins"].item(), abs=1e-5)
    assert abs(live_loss.item() - math.log(2)) > 1e-2  # the moved policy is not the reference

    with pytest.raises(ValueError, match="holds no reference model"):
        precomputed(**batch)
    # by default the reference is a frozen copy of the policy as it is at construction
    copied = DPO(model)
    assert copied.ref_model is not model
    assert all(torch.equal(a, b) for a, b in zip(copied.ref_model.parameters(), model.parameters()))


def test_one_policy_forward_per_batch_over_chosen_and_rejected(make_transformer):
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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "neither num_train_steps nor num_epochs.*early_stopper"),
        (dict(early_stopper=EarlyStopper(lambda m: 0.0), early_stop_every=1), "neither num_train_steps nor num_epochs"),
        (dict(num_train_steps=1, early_stopper=EarlyStopper(lambda m: 0.0)), "needs early_stop_every"),
        (dict(num_train_steps=1, early_stop_every=5), "no early_stopper"),
        (dict(num_train_steps=1, loss_type="ipo", label_smoothing=0.1), "sigmoid' only"),
        (dict(num_train_steps=1, beta=0.0), "beta must be > 0"),
        (dict(num_train_steps=1, logp_reduction="max"), "logp_reduction"),
        (dict(num_train_steps=1, learning_rate=1e-7, end_learning_rate=1e-6), "end_learning_rate"),
        (dict(num_train_steps=0), "num_train_steps must be >= 1"),
        (dict(num_train_steps=1, nll_weight=-1.0), "nll_weight"),
    ],
)
def test_bad_config_fails_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPOConfig(**kwargs)


@pytest.mark.parametrize(
    "dataset, kwargs, message",
    [
        ([], {}, "empty"),
        ([dict(chosen=torch.tensor([1, 2, 3]), rejected=torch.tensor([1, 2]), prompt_len=2)], {}, "no response tokens in the rejected"),
        ([dict(chosen=torch.tensor([1, 2, 3]), rejected=torch.tensor([1, 5, 4]), prompt_len=2)], {}, "same prompt"),
        ([dict(chosen=torch.tensor([1, 2, 3]), rejected=torch.tensor([1, 2, 4]), prompt_len=2)], dict(valid_every=1), "no valid_dataset"),
        ([(torch.tensor([1, 2, 3]), 2)], {}, "must be a dict"),
    ],
)
def test_bad_data_fails_at_construction(make_transformer, dataset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPOTrainer(make_transformer(), dataset, num_train_steps=1, accelerate_kwargs=dict(cpu=True), **kwargs)
