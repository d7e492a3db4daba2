"""Reruns on a run folder whose user code changed since: a flipped global constant, a callee edited in its own module
(both refused, naming the stage, the callable and one probe whose output changed, finished stage or half-made
pairs), a re-spelled reward (resumed), a bumped fingerprint_salt (refused). The code lives in module files written
to tmp_path and imported fresh before each run, as a new process would."""

import importlib
import json
import sys
import textwrap

import pytest
import torch
from conftest import tiny_transformer
from helpers import plan_trainer

from self_rewarding_lm_pytorch import ExternalRewardDPOConfig, SelfRewardingTrainer, SFTConfig
from self_rewarding_lm_pytorch.storage.checkpoint import read_checkpoint
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

TOKENIZER = CharTokenizer()
SCORING = """
    def graded_score(prompt, response):
        {local} = sum(c.isdigit() for c in response)
        return float({local}) {edit}
"""
REWARDS = """
    from fp_run_scoring import graded_score

    SIGN = {sign}
    reward = lambda p, r: SIGN * graded_score(p, r)
"""
STAGE_1 = "stage-01-external-reward-dpo"


@pytest.fixture
def load(tmp_path, monkeypatch):
    """load(sign=..., edit=..., local=...) -> the `reward` of freshly written and imported modules."""
    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a module rewritten within a second is read again

    def load(sign=1, edit="", local="digits"):
        (code / "fp_run_scoring.py").write_text(textwrap.dedent(SCORING.format(local=local, edit=edit)))
        (code / "fp_run_rewards.py").write_text(textwrap.dedent(REWARDS.format(sign=sign)))
        for name in ("fp_run_scoring", "fp_run_rewards"):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return importlib.import_module("fp_run_rewards").reward

    yield load
    for name in ("fp_run_scoring", "fp_run_rewards"):
        sys.modules.pop(name, None)


def refusal(run, reward) -> str:
    with pytest.raises(ValueError) as error:
        plan_trainer(run, reward)()
    return str(error.value)


def test_a_reward_whose_global_constant_changed_is_refused_with_its_name_and_a_changed_probe(tmp_path, load):
    """Under 1 s idle."""
    run = tmp_path / "run"
    plan_trainer(run, load(sign=1))()
    # the probe outputs are stored with the fingerprint: the first probe prompt with each probe response
    records = json.loads(read_checkpoint(run / f"{STAGE_1}.pt")["fingerprint"]["reward_fn probes"])
    assert records[:5] == [["'sort 3 1 5:', ''", "0.0"], ["'sort 3 1 5:', '42'", "2.0"], ["'sort 3 1 5:', ' 1 2 3'", "3.0"],
                           ["'sort 3 1 5:', 'The answer is 42.'", "2.0"], ["'sort 3 1 5:', 'sort 3 1 5:'", "3.0"]]
    message = refusal(run, load(sign=-1))
    assert (f"{STAGE_1}.pt was written by a different plan: stage 1 changed (reward_fn; reward_fn probes: "
            f"reward_fn('sort 3 1 5:', '42') returned 2.0 before, -2.0 now)") in message
    assert "another checkpoints_folder" in message and "overwrite_checkpoints=True" in message
    summaries = plan_trainer(run, load(sign=1))()  # the original code resumes
    assert [s["resumed"] for s in summaries] == [True, True]


def test_a_callee_edited_in_its_own_module_is_refused(tmp_path, load):
    """Under 1 s idle."""
    run = tmp_path / "run"
    plan_trainer(run, load())()
    message = refusal(run, load(edit="* 2"))  # fp_run_rewards is the same file; graded_score doubles its score
    assert "stage 1 changed (reward_fn; reward_fn probes: reward_fn('sort 3 1 5:', '42') returned 2.0 before, 4.0 now)" \
        in message


def test_half_made_pairs_of_another_reward_are_refused_too(tmp_path, load):
    """Under 1 s idle."""
    run = tmp_path / "run"
    plan_trainer(run, load())()
    (run / f"{STAGE_1}.pt").unlink()  # as if killed after its pairs were made, before the stage was saved
    message = refusal(run, load(sign=-1))
    assert (f"the files of {STAGE_1} in {run} were made by a different plan: stage 1 changed (reward_fn; reward_fn "
            f"probes: reward_fn('sort 3 1 5:', '42') returned 2.0 before, -2.0 now)") in message
    (run / f"{STAGE_1}.plan.json").unlink()  # a folder from before the plan record: the pairs' own fingerprint
    message = refusal(run, load(sign=-1))
    assert f"{STAGE_1}.pairs holds pairs made by a different plan (changed: reward_fn, reward_fn probes: " in message
    assert "returned 2.0 before, -2.0 now" in message


def test_a_respelled_reward_resumes(tmp_path, load):
    """Renaming a local variable keeps the bytecode and the probes: the same plan, so the run resumes. Under 1 s idle."""
    run = tmp_path / "run"
    plan_trainer(run, load(local="digits"))()
    summaries = plan_trainer(run, load(local="n_digits"))()
    assert [s["resumed"] for s in summaries] == [True, True]


def salted_trainer(folder, salt):
    task = SortDigitsTask(length=3, seed=3)
    torch.manual_seed(0)
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    stage = ExternalRewardDPOConfig(prompt_dataset=task.prompts(8), reward_fn=lambda p, r: float(len(r)), temperature=1.0,
                                    num_preference_pairs=1, prompt_batch_size=4, response_max_new_tokens=4, batch_size=1,
                                    num_train_steps=1, fingerprint_salt=salt)
    return SelfRewardingTrainer(model, finetune_configs=[stage], tokenizer_encode=TOKENIZER.encode,
                                tokenizer_decode=TOKENIZER.decode, eos_id=TOKENIZER.eos_id,
                                accelerate_kwargs={"cpu": True}, checkpoints_folder=folder)


def test_a_bumped_fingerprint_salt_is_refused(tmp_path):
    """The way to mark a change the fingerprint cannot see (a reward served over the network). Under 1 s idle."""
    salted_trainer(tmp_path, "grader-v1")()
    with pytest.raises(ValueError, match=r"stage 0 changed \(fingerprint_salt\)"):
        salted_trainer(tmp_path, "grader-v2")()
    assert [s["resumed"] for s in salted_trainer(tmp_path, "grader-v1")()] == [True]


def sft_trainer(folder, seed):
    task = SortDigitsTask(length=3, seed=3)
    torch.manual_seed(seed)
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    stage = SFTConfig(train_dataset=task.instruction_examples(8), batch_size=4, num_train_steps=2, learning_rate=1e-3,
                      end_learning_rate=1e-4, checkpoint_every=1)
    return SelfRewardingTrainer(model, finetune_configs=[stage], tokenizer_encode=TOKENIZER.encode,
                                tokenizer_decode=TOKENIZER.decode, eos_id=TOKENIZER.eos_id,
                                accelerate_kwargs={"cpu": True}, checkpoints_folder=folder)


def test_step_saves_of_an_unfinished_stage_made_from_other_weights_are_refused(tmp_path):
    """An SFT stage's step saves record its own settings only: from other initial weights they were resumed. Under 1 s idle."""
    sft_trainer(tmp_path, seed=0)()
    (tmp_path / "stage-00-sft.pt").unlink()  # as if killed after its last step save, before the stage was saved
    assert (tmp_path / "stage-00-sft.steps" / "sft-step-2.pt").is_file()
    with pytest.raises(ValueError, match=r"the files of stage-00-sft in .* were made by a different plan: stage 0 "
                                         r"changed \(upstream\)\. Use another checkpoints_folder"):
        sft_trainer(tmp_path, seed=1)()
    trainer = sft_trainer(tmp_path, seed=0)  # the same plan resumes from its last step save
    trainer()
    assert trainer.summaries[0]["stage"] == 0 and (tmp_path / "stage-00-sft.pt").is_file()
