import pytest
import torch
from conftest import tiny_transformer

from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs
from self_rewarding_lm_pytorch.training.losses import preference_loss
from self_rewarding_lm_pytorch.training.spin import SPIN, SelfPlayConfig, SPINTrainer


def char_model(seed=0):
    torch.manual_seed(seed)
    return tiny_transformer(num_tokens=CharTokenizer.num_tokens, max_seq_len=48, depth=2)


def test_spin_loss_is_the_sigmoid_preference_loss_with_beta_lambda():
    model = char_model()
    spin = SPIN(model, λ=0.5)
    assert spin.ref_model is None  # θt's log-probs are stored: no reference copy
    real = torch.tensor([[5, 6, 7, 8, 9, -1], [5, 6, 10, 11, 12, 13]])
    fake = torch.tensor([[5, 6, 9, 9, -1, -1], [5, 6, 3, -1, -1, -1]])
    prompt_len = torch.tensor([2, 2])
    ref_real, ref_fake = torch.tensor([-20.0, -30.0]), torch.tensor([-10.0, -15.0])
    loss, _ = spin(real, fake, prompt_len, chosen_ref_logp=ref_real, rejected_ref_logp=ref_fake)

    policy = reference_logprobs(model, [real[0, :5], real[1], fake[0, :4], fake[1, :3]], torch.tensor([2, 2, 2, 2]), -1)
    losses = preference_loss(policy[:2], policy[2:], ref_real, ref_fake, beta=0.5)
    torch.testing.assert_close(loss, losses.mean())


def test_bad_spin_settings_fail_at_construction():
    data = SortDigitsTask(seed=1).instruction_examples(4)
    with pytest.raises(ValueError, match="unknown settings \\['lambda'\\]"):
        SelfPlayConfig(train_sft_dataset=data, max_seq_len=24, spin_kwargs=dict(**{"lambda": 0.1}))
    with pytest.raises(ValueError, match="beta must be > 0"):
        SelfPlayConfig(train_sft_dataset=data, max_seq_len=24, spin_kwargs=dict(λ=0.0))
    with pytest.raises(ValueError, match="no room to generate"):
        SPINTrainer(char_model(), train_sft_dataset=data, max_seq_len=4, accelerate_kwargs=dict(cpu=True))


def test_an_orchestrated_spin_stage_generates_with_the_stages_seed(monkeypatch, tmp_path):
    """The orchestrator's SPIN stage passes its seed (trainer seed + stage index) to SPINTrainer, as every generating
    stage does: two trainer seeds give two streams of SPIN answers, not both seed 0's."""
    from types import SimpleNamespace

    import self_rewarding_lm_pytorch.stages.spin as spin_stage

    seen = {}

    class Recorder:
        def __init__(self, model, config, **kwargs):
            seen.update(kwargs)

        def train(self):
            return [dict(loss=0.0, **{"rewards/accuracies": 1.0, "rewards/margins": 0.0})]

    monkeypatch.setattr(spin_stage, "SPINTrainer", Recorder)
    context = SimpleNamespace(model=None, pad_id=0, eos_id=0, accelerator=None, logger=None, sampler=None, seed=7,
                              path=lambda suffix: tmp_path / suffix)
    spin_stage.run_spin(SelfPlayConfig(train_sft_dataset=[(torch.tensor([1, 2, 3]), 1)], max_seq_len=8,
                                       num_train_steps=1), context)
    assert seen["seed"] == 7


def test_sft_step_saves_are_made_under_the_padding_id(tmp_path):
    """A step save records the pad id with the settings and initial weights: resumed with another pad id, the
    batches would differ, so the fingerprints differ."""
    from self_rewarding_lm_pytorch.training.sft import SFTConfig, SFTTrainer

    data = [(torch.tensor([1, 2, 3, 4]), 2)] * 4
    config = SFTConfig(train_dataset=data, num_train_steps=1, batch_size=2, checkpoint_every=1)
    fingerprints = [SFTTrainer(char_model(), config, pad_id=pad_id, accelerate_kwargs=dict(cpu=True),
                               checkpoint_folder=tmp_path / str(pad_id)).fingerprint for pad_id in (0, 31)]
    assert {k for k in fingerprints[0] if fingerprints[0][k] != fingerprints[1].get(k)} == {"pad_id"}
