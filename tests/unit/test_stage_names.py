"""A stage config's optional `name`: the label of the stage's files in place of its kind, checked as a file-name
fragment, part of the stage's identity, and no change to the files of a stage without one."""

import pytest
import torch
from conftest import tiny_transformer
from helpers import decode_tokens, encode_str, small_dpo, small_pairs

from self_rewarding_lm_pytorch import ExternalRewardDPOConfig, SelfRewardingTrainer, SFTConfig
from self_rewarding_lm_pytorch.tasks.sort_digits import SortDigitsTask


def sft_data():
    return [(torch.arange(1, 13) % 30, torch.tensor(4)) for _ in range(8)]


def sft(**overrides):
    settings = {"num_train_steps": 1, "batch_size": 4, "learning_rate": 1e-3, "end_learning_rate": 1e-4}
    return SFTConfig(train_dataset=sft_data(), **{**settings, **overrides})


def trainer(stages, folder):
    torch.manual_seed(0)
    return SelfRewardingTrainer(tiny_transformer(num_tokens=256), finetune_configs=stages, tokenizer_encode=encode_str,
                                tokenizer_decode=decode_tokens, checkpoints_folder=folder, eos_id=1, seed=0)


@pytest.mark.parametrize("bad", ["", "Judge", "judge training", "../up", "judge--training", "-judge", "a.pt", "x" * 65, 3])
def test_a_name_that_is_not_a_safe_file_name_fragment_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match=r"SFTConfig\.name is part of the stage's file names.*got"):
        sft(name=bad)
    with pytest.raises(ValueError, match=r"ExternalRewardDPOConfig\.name"):
        ExternalRewardDPOConfig(prompt_dataset=["a"], reward_fn=lambda p, r: 0.0, name=bad, **small_pairs(),
                                **small_dpo())


def test_named_stages_label_their_files_and_unnamed_ones_keep_their_kind(tmp_path):
    prompts = SortDigitsTask(seed=3).prompts(8)
    dpo = ExternalRewardDPOConfig(prompt_dataset=prompts, reward_fn=lambda p, r: 0.0, name="checker-dpo",
                                  **small_pairs(), **small_dpo())
    named = trainer([sft(name="instructions"), sft(), dpo], tmp_path)
    assert named.checkpoint_path(0).name == "stage-00-instructions.pt"
    assert named.checkpoint_path(1).name == "stage-01-sft.pt"  # no name: the kind, as before names existed
    assert named.pairs_folder(2).name == "stage-02-checker-dpo.pairs"


def test_the_name_is_part_of_the_stage_identity_and_absent_from_an_unnamed_stage_fingerprint(tmp_path):
    unnamed = trainer([sft()], tmp_path)
    # an unnamed stage's fingerprint has no `name` part: checkpoints written before names existed still match
    assert "name" not in unnamed.fingerprint(0) and unnamed.fingerprint(0)["stage"] == "stage-00-sft"
    named = trainer([sft(name="instructions")], tmp_path)
    assert named.fingerprint(0)["stage"] == "stage-00-instructions"
    differing = {k for k in named.fingerprint(0) if named.fingerprint(0)[k] != unnamed.fingerprint(0)[k]}
    assert differing == {"stage"}  # the same settings otherwise


def test_a_named_stage_writes_and_resumes_from_its_named_checkpoint(tmp_path):
    first = trainer([sft(name="instructions"), sft(name="judge-training")], tmp_path)
    first()
    assert sorted(p.name for p in tmp_path.glob("stage-*.pt")) == ["stage-00-instructions.pt",
                                                                    "stage-01-judge-training.pt"]
    again = trainer([sft(name="instructions"), sft(name="judge-training")], tmp_path)
    assert again.finished_stages() == 2
    # the same plan under other names is another plan: its files are not these
    assert trainer([sft(name="instructions"), sft()], tmp_path).finished_stages() == 1
