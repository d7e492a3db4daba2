"""The judges and filters a small model can be trusted with: self-consistency votes, consistency filtering,
margin-weighted loss, and judge-training examples from the model's own answers."""


import torch

from self_rewarding_lm_pytorch import SelfConsistencyDPOConfig
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask, is_correct

TOKENIZER = CharTokenizer()


def test_self_consistency_stage_end_to_end(make_transformer, tmp_path):
    """Votes from a tiny model's own samples make pairs; the stage trains on them with margin weights.
    Under 1 s idle."""
    from self_rewarding_lm_pytorch import SelfRewardingTrainer

    model = make_transformer(seed=0, num_tokens=CharTokenizer.num_tokens, max_seq_len=32, dim=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage = SelfConsistencyDPOConfig(
        # answer_key: the first character, so a random model's answers collide often enough to vote
        prompt_dataset=SortDigitsTask(seed=0).prompts(32), answer_key=lambda r: r[:1] or None,
        num_preference_pairs=4, num_candidate_responses=6, prompt_batch_size=8, response_max_new_tokens=3,
        temperature=1.0, top_p=None, accept_fewer_pairs=True, min_vote_margin=0.1, margin_weighted_loss=True,
        num_train_steps=2, batch_size=2, learning_rate=1e-3, end_learning_rate=1e-4, verifier=is_correct,
    )
    summary = SelfRewardingTrainer(model, finetune_configs=[stage], tokenizer_encode=TOKENIZER.encode,
                                   tokenizer_decode=TOKENIZER.decode, eos_id=TOKENIZER.eos_id,
                                   checkpoints_folder=tmp_path, accelerate_kwargs=dict(cpu=True))()[0]
    assert summary["kind"] == "self-consistency-dpo" and summary["pairs"] > 0
    pairs = DPODataset(tmp_path / "stage-00-self-consistency-dpo.pairs")
    for record in pairs.records():
        assert record["chosen_score"] - record["rejected_score"] >= 0.1 - 1e-6  # the vote margin held
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
