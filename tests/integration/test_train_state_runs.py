"""Non-finite steps, non-finite stages and changed plans: stopped or refused with what happened and the way out."""

import pytest
import torch
from conftest import tiny_transformer
from helpers import count_digits, plan_trainer
from torch import nn

from self_rewarding_lm_pytorch import SFTTrainer
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.train_state import NonFiniteStepError

TOKENIZER = CharTokenizer()


class NaNOnCall(nn.Module):
    """A model whose forward returns NaN logits on the given calls (a numerical blow-up in a batch)."""

    def __init__(self, calls: set[int]):
        super().__init__()
        torch.manual_seed(0)
        self.net = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
        self.calls, self.count = calls, 0

    def forward(self, ids, **kwargs):
        self.count += 1
        logits = self.net(ids, **kwargs)
        return logits * float("nan") if self.count in self.calls else logits


def sft(model, folder, **overrides):
    data = SortDigitsTask(length=3, seed=0).instruction_examples(16)
    settings = dict(train_dataset=data, batch_size=4, grad_accum_steps=1, num_train_steps=4, learning_rate=1e-3,
                    end_learning_rate=1e-4, checkpoint_every=2) | overrides
    return SFTTrainer(model, accelerate_kwargs=dict(cpu=True), checkpoint_folder=folder, **settings)


def test_a_nan_loss_stops_training_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    """Under 1 s idle."""
    model = NaNOnCall({3})
    with pytest.raises(NonFiniteStepError, match=r"sft: the loss or the gradients are not finite at step 3") as error:
        sft(model, tmp_path).train()
    assert "sft-step-2.pt" in str(error.value) and "skip_nonfinite_steps=True" in str(error.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the step never reached the weights


def test_skip_nonfinite_steps_skips_the_update_and_goes_on(tmp_path):
    """Under 1 s idle."""
    model = NaNOnCall({3})
    history = sft(model, tmp_path, skip_nonfinite_steps=True).train()
    assert len(history) == 4 and all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.isfinite(torch.tensor(history[2]["loss"])) and torch.isfinite(torch.tensor(history[3]["loss"]))


def minus_digits(prompt, response):
    return -float(sum(c.isdigit() for c in response))


def test_a_changed_plan_is_refused_naming_what_changed(tmp_path):
    """The original fingerprint covered plain settings only: a flipped reward_fn reused the old pairs and weights.
    Under 1 s idle."""
    plan_trainer(tmp_path, count_digits)()
    with pytest.raises(ValueError, match=r"stage 1 changed \(reward_fn; reward_fn probes: reward_fn\('sort 3 1 5:', "
                                         r"'42'\) returned 2.0 before, -2.0 now\).*overwrite_checkpoints=True"):
        plan_trainer(tmp_path, minus_digits)()
    with pytest.raises(ValueError, match=r"stage 0 changed \(tokenizer\)"):
        plan_trainer(tmp_path, count_digits, encode=lambda text: TOKENIZER.encode(text.lower()))()
    with pytest.raises(ValueError, match=r"stage 0 changed \(upstream\)"):  # other initial weights
        plan_trainer(tmp_path, count_digits, seed=1)()
    summaries = plan_trainer(tmp_path, count_digits)()  # the same plan resumes
    assert [s["resumed"] for s in summaries] == [True, True]


def test_a_nan_in_dpo_stops_it_naming_the_step(tmp_path):
    """Under 1 s idle."""
    from self_rewarding_lm_pytorch import DPOTrainer

    pair = dict(chosen=torch.tensor([1, 2, 3, 4]), rejected=torch.tensor([1, 2, 5]), prompt_len=2,
                chosen_ref_logp=-3.0, rejected_ref_logp=-2.0)
    model = NaNOnCall({2})
    trainer = DPOTrainer(model, [pair] * 8, batch_size=2, num_train_steps=3, accelerate_kwargs=dict(cpu=True),
                         checkpoint_folder=tmp_path, checkpoint_every=1)
    with pytest.raises(NonFiniteStepError, match=r"dpo: the loss or the gradients are not finite at step 2") as error:
        trainer.train()
    assert "dpo-step-1.pt" in str(error.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_stage_with_non_finite_weights_is_not_saved_as_finished(tmp_path):
    """Under 1 s idle."""
    def blow_up(model):
        next(model.parameters()).data.fill_(float("nan"))
        return {}

    with pytest.raises(FloatingPointError, match="stage 0 .* non-finite weights"):
        plan_trainer(tmp_path, count_digits, evaluate=blow_up)()
    assert not (tmp_path / "stage-00-sft.pt").exists()
