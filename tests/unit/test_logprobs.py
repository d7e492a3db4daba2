import math

import pytest
import torch

from self_rewarding_lm_pytorch.training.logprobs import model_sequence_logprobs, response_mask, sequence_logprobs

# Hand-built example: vocab 3, sequence [0, 1, 2, 1, 0], prompt = the first 2 tokens.
# Logits are log-probabilities, so log_softmax returns them unchanged and every value is readable.
PROBS = torch.tensor(
    [
        [0.2, 0.5, 0.3],  # position 0 predicts token 1 (= 1): prompt, not scored
        [0.1, 0.2, 0.7],  # position 1 predicts token 2 (= 2): p = 0.7
        [0.3, 0.6, 0.1],  # position 2 predicts token 3 (= 1): p = 0.6
        [0.25, 0.25, 0.5],  # position 3 predicts token 4 (= 0): p = 0.25
        [0.9, 0.05, 0.05],  # position 4 predicts nothing
    ]
)
SEQ = torch.tensor([[0, 1, 2, 1, 0]])
PROMPT_LEN = torch.tensor([2])


def hand_example():
    logits = PROBS.log()[None]
    mask = response_mask(SEQ, PROMPT_LEN, torch.zeros_like(SEQ, dtype=torch.bool))
    return logits, mask


def test_sum_is_log_prob_of_response_scored_by_previous_position():
    logits, mask = hand_example()
    expected = math.log(0.7) + math.log(0.6) + math.log(0.25)
    assert sequence_logprobs(logits, SEQ, mask).item() == pytest.approx(expected, abs=1e-6)


def test_mean_divides_by_scored_token_count():
    logits, mask = hand_example()
    expected = (math.log(0.7) + math.log(0.6) + math.log(0.25)) / 3
    assert sequence_logprobs(logits, SEQ, mask, reduction="mean").item() == pytest.approx(expected, abs=1e-6)


def test_padding_is_excluded_even_with_an_out_of_vocabulary_pad_id():
    logits, _ = hand_example()
    seq = torch.tensor([[0, 1, 2, 1, -1]])  # last token is padding (pad id -1)
    mask = response_mask(seq, PROMPT_LEN, seq == -1)
    expected = math.log(0.7) + math.log(0.6)
    assert sequence_logprobs(logits, seq, mask).item() == pytest.approx(expected, abs=1e-6)
    assert sequence_logprobs(logits, seq, mask, "mean").item() == pytest.approx(expected / 2, abs=1e-6)


def test_rows_are_independent_in_a_batch():
    logits, mask = hand_example()
    batch_logits = torch.cat([logits, logits.flip(-1)])
    batch_seq = SEQ.repeat(2, 1)
    batch_mask = mask.repeat(2, 1)
    out = sequence_logprobs(batch_logits, batch_seq, batch_mask)
    assert out[0].item() == pytest.approx(math.log(0.7 * 0.6 * 0.25), abs=1e-6)
    # flipped vocab: token 2 -> p[0], token 1 -> p[1], token 0 -> p[2]
    assert out[1].item() == pytest.approx(math.log(0.1 * 0.6 * 0.5), abs=1e-6)


def test_bad_reduction_and_mismatched_shapes_are_rejected():
    logits, mask = hand_example()
    with pytest.raises(TypeError, match="reduction"):
        sequence_logprobs(logits, SEQ, mask, reduction="max")
    with pytest.raises(Exception, match="n"):
        sequence_logprobs(logits, SEQ[:, :4], mask[:, :4])


def test_model_sequence_logprobs_matches_manual_forward(make_transformer):
    model = make_transformer(num_tokens=16).eval()
    seq = torch.tensor([[3, 4, 5, 6, 7, -1], [1, 2, 3, 4, 5, 6]])
    mask = response_mask(seq, torch.tensor([2, 3]), seq == -1)
    out = model_sequence_logprobs(model, seq, mask)

    for row, (n_tokens, prompt_len) in enumerate([(5, 2), (6, 3)]):
        ids = seq[row : row + 1, :n_tokens]
        log_probs = model(ids).log_softmax(-1)[0]
        manual = sum(log_probs[t - 1, ids[0, t]] for t in range(prompt_len, n_tokens))
        assert out[row].item() == pytest.approx(manual.item(), abs=1e-5)
