"""DPO on external pairs with the reference log-probs computed once before training (training/reference.py)."""


import torch
from helpers import sort_pairs

from self_rewarding_lm_pytorch.training.reference import with_reference_logprobs


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
