"""Every long phase shows a bar on the main process: pair generation (prompts, pairs kept, parse and tie rates),
SPIN's answers and reference log-probs; a bar that halts early says why."""


from helpers import sort_pairs

from self_rewarding_lm_pytorch.tasks.sort_digits import SortDigitsTask
from self_rewarding_lm_pytorch.training.dpo import DPOTrainer
from self_rewarding_lm_pytorch.training.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.training.spin import SPINTrainer


def test_spin_shows_its_answer_generation(char_model, tmp_path, capsys):
    """Under 1 s idle."""
    task = SortDigitsTask(length=3, seed=0)
    SPINTrainer(char_model, train_sft_dataset=task.instruction_examples(12), max_seq_len=24, num_train_steps=1,
                batch_size=4, eos_id=0, checkpoint_folder=tmp_path, accelerate_kwargs=dict(cpu=True))()
    err = capsys.readouterr().err
    assert "spin answers (iteration 0): 100%" in err and "12/12" in err


def test_early_stopping_says_why_the_bar_halted(make_transformer, capsys):
    """Under 1 s idle."""
    scores = iter([1.0, 2.0, 3.0])
    stopper = EarlyStopper(lambda model: next(scores), mode="min", patience=2)
    DPOTrainer(make_transformer(num_tokens=128), sort_pairs(32, seed=0), batch_size=8, num_train_steps=100,
               early_stopper=stopper, early_stop_every=1, accelerate_kwargs=dict(cpu=True))()
    assert ("dpo: early stop at step 3: the score did not improve by more than 0 in 2 evaluations (patience); "
            "best score 1 (min) at step 1, whose weights are restored") in "".join(capsys.readouterr())


def test_dpo_shows_its_reference_log_prob_pass(make_transformer, capsys):
    """External pairs without reference log-probs get them in one pass before the first step: it shows a bar.
    Under 1 s idle."""
    DPOTrainer(make_transformer(num_tokens=128), sort_pairs(20, seed=0), valid_dataset=sort_pairs(6, seed=1),
               batch_size=8, num_train_steps=1, accelerate_kwargs=dict(cpu=True))()
    err = capsys.readouterr().err
    assert "dpo reference log-probs: 100%" in err and "20/20" in err
    assert "dpo reference log-probs (valid): 100%" in err and "6/6" in err
