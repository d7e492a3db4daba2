import re

import pytest
import torch
from conftest import tiny_transformer

from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs
from self_rewarding_lm_pytorch.training.spin import SPINTrainer


def char_model(seed=0):
    torch.manual_seed(seed)
    return tiny_transformer(num_tokens=CharTokenizer.num_tokens, max_seq_len=48, depth=2)


def spin_trainer(model, tmp_path, **overrides):
    task = SortDigitsTask(length=3, seed=0)
    settings = dict(
        train_sft_dataset=task.instruction_examples(48), valid_sft_dataset=task.instruction_examples(24),
        max_seq_len=24, num_train_steps=12, batch_size=16, learning_rate=1e-3, dropout=0.0,
        spin_kwargs=dict(λ=0.1), checkpoint_folder=tmp_path, eos_id=0, accelerate_kwargs=dict(cpu=True),
    )
    return SPINTrainer(model, **{**settings, **overrides})


def test_spin_raises_the_real_over_generated_margin_on_held_out_prompts(tmp_path):
    """Under 1 s idle."""
    history = spin_trainer(char_model(), tmp_path)()
    # at step 0 the policy is θt itself, so every margin is exactly 0; training must open it on held-out pairs
    final = history[-1]
    assert final["valid_rewards/margins"] > 0.5 and final["valid_rewards/accuracies"] > 0.9


def test_each_iteration_generates_with_the_model_at_its_start(tmp_path, monkeypatch):
    """About 1 s idle."""
    model = char_model()
    trainer = spin_trainer(model, tmp_path, num_iterations=2, num_train_steps=3, valid_sft_dataset=None)
    seen = []
    original = SPINTrainer.opponent_pairs

    def spy(self, dataset, iteration):
        pairs = original(self, dataset, iteration)
        seen.append(({k: v.clone() for k, v in model.state_dict().items()}, pairs))
        return pairs

    monkeypatch.setattr(SPINTrainer, "opponent_pairs", spy)
    trainer()

    (first_state, _), (second_state, second_pairs) = seen
    assert any(not torch.equal(first_state[k], second_state[k]) for k in first_state)  # θ1 != θ0
    # iteration 1's stored reference log-probs are θ1's, the model as it was when iteration 1 began
    theta_1 = char_model()
    theta_1.load_state_dict(second_state)
    pairs = second_pairs[:8]
    recomputed = reference_logprobs(theta_1, [p["rejected"] for p in pairs], torch.tensor([p["prompt_len"] for p in pairs]), -1)
    torch.testing.assert_close(torch.tensor([p["rejected_ref_logp"] for p in pairs]), recomputed, atol=1e-4, rtol=1e-4)


def test_checkpoints_at_multiples_of_checkpoint_every(tmp_path):
    """Under 1 s idle."""
    spin_trainer(char_model(), tmp_path, num_train_steps=5, checkpoint_every=2, valid_sft_dataset=None)()
    # every 2 steps, and the last step (marked finished) so that a rerun knows the iteration is done
    saved = sorted(p.name for p in tmp_path.glob("iteration-0-step-*.pt"))
    assert saved == ["iteration-0-step-2.pt", "iteration-0-step-4.pt", "iteration-0-step-5.pt"]


def test_checkpoint_every_longer_than_the_iteration_still_saves_its_last_step(tmp_path):
    """Under 1 s idle."""
    spin_trainer(char_model(), tmp_path, num_train_steps=2, checkpoint_every=100, valid_sft_dataset=None)()
    assert sorted(p.name for p in tmp_path.glob("iteration-0-step-*.pt")) == ["iteration-0-step-2.pt"]


def test_a_resumed_run_logs_its_next_iteration_after_the_finished_ones(tmp_path):
    """Iteration 0 finished before the kill: the rerun skips it, and iteration 1's rows reach the trackers at the
    global steps of an uninterrupted run (3 steps per iteration: 4, 5, 6), not again at 1, 2, 3. About 1 s idle."""
    from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger

    settings = dict(num_iterations=2, num_train_steps=3, checkpoint_every=3, valid_sft_dataset=None)
    spin_trainer(char_model(), tmp_path, **settings)()
    for path in tmp_path.glob("iteration-1-*"):
        path.unlink()  # killed before iteration 1 saved anything

    class Recorder(MetricsLogger):
        steps: list[int] = []

        def log(self, values, step=None):
            super().log(values, step)
            self.steps.append(self.last_step)

    trainer = spin_trainer(char_model(), tmp_path, **settings)
    trainer.logger = Recorder(trainer.accelerator, "spin")
    history = trainer()
    assert [(row["iteration"], row["step"]) for row in history] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert Recorder.steps == [4, 5, 6]


STALE = r"was made by SPIN with other settings, data or initial weights \(changed: {}\)"


def test_a_finished_iteration_made_by_another_run_is_refused_naming_what_changed(tmp_path):
    """SPINTrainer used alone: iteration 0 of 2 finished, then killed before iteration 1 saved anything. The rerun
    used to load iteration 0's weights and rows with no check, so a rerun with another λ, other SFT data or another
    initial model silently went on from the old run's iteration. Each is refused, naming what changed, the folder and
    the way out, before the model's weights are touched; the same run reuses the finished iteration, and so does a run
    with more iterations. About 1 s idle (measured: 2.2 s at load 6 on the shared 2 cores)."""
    task = SortDigitsTask(length=3, seed=0)
    settings = {"num_iterations": 2, "num_train_steps": 2, "checkpoint_every": 2, "valid_sft_dataset": None}
    spin_trainer(char_model(), tmp_path, **settings)()
    for path in tmp_path.glob("iteration-1-*"):
        path.unlink()  # killed before iteration 1 saved anything

    other = char_model(seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    way_out = rf"so iteration 0's weights and rows cannot be reused\. Use another checkpoint_folder, or delete {re.escape(str(tmp_path))}"
    with pytest.raises(ValueError, match=rf"iteration-0-step-2.pt {STALE.format('initial_weights')} \(the model "
                                         rf"the trainer is built on has other weights .*\), {way_out}"):
        spin_trainer(other, tmp_path, **settings)()
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=rf"iteration-0-step-2.pt {STALE.format('spin_kwargs')}, {way_out}"):
        spin_trainer(char_model(), tmp_path, **settings, spin_kwargs={"λ": 0.5})()
    with pytest.raises(ValueError, match=rf"iteration-0-step-2.pt {STALE.format('train_sft_dataset')}, {way_out}"):
        spin_trainer(char_model(), tmp_path, **settings, train_sft_dataset=task.instruction_examples(40))()

    history = spin_trainer(char_model(), tmp_path, **{**settings, "num_iterations": 3})()
    assert [(row["iteration"], row["step"]) for row in history] == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]


def test_saved_pairs_made_by_another_run_are_refused_naming_what_changed(tmp_path):
    """Iteration 0's pairs are on disk, none of its steps: a rerun with another λ is refused naming it (it used to
    say only "made by other SPIN settings"), and so is one with another seed, whose opponent answers differ (the
    pairs were reused for it). Under 1 s idle (measured: 1.0 s at load 6 on the shared 2 cores)."""
    settings = {"num_train_steps": 2, "checkpoint_every": 2, "valid_sft_dataset": None}
    spin_trainer(char_model(), tmp_path, **settings)()
    for path in tmp_path.glob("iteration-0-step-*"):
        path.unlink()  # killed before iteration 0 saved a step

    way_out = rf"so iteration 0's train pairs cannot be reused\. Use another checkpoint_folder, or delete {re.escape(str(tmp_path))}"
    with pytest.raises(ValueError, match=rf"iteration-0-train-pairs.pt {STALE.format('spin_kwargs')}, {way_out}"):
        spin_trainer(char_model(), tmp_path, **settings, spin_kwargs={"λ": 0.5})()
    with pytest.raises(ValueError, match=rf"iteration-0-train-pairs.pt {STALE.format('seed')}, {way_out}"):
        spin_trainer(char_model(), tmp_path, **settings, seed=1)()
    assert len(spin_trainer(char_model(), tmp_path, **settings)()) == 2
