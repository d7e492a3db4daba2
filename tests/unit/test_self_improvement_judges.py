"""The judges and filters a small model can be trusted with: self-consistency votes, consistency filtering,
margin-weighted loss, and judge-training examples from the model's own answers."""

import math

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from self_rewarding_lm_pytorch import JudgementsAgree, MarginAtLeast, RewardConfig, SelfConsistencyDPOConfig
from self_rewarding_lm_pytorch.judging.eft import (
    judge_mistakes,
    labelled_judge_examples,
    own_answer_judge_examples,
    two_point_targets,
)
from self_rewarding_lm_pytorch.judging.judges import Candidates
from self_rewarding_lm_pytorch.judging.self_consistency import SelfConsistencyJudge
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.loop import generate_preference_pairs
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError, PairGenerationStats
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask, answer_key
from self_rewarding_lm_pytorch.training.dpo_batches import DPOCollate
from self_rewarding_lm_pytorch.training.dpo_objective import DPO

NAN = math.nan
TOKENIZER = CharTokenizer()


def candidates(groups: list[list[str]]) -> Candidates:
    n = len(groups[0])
    responses = [r for group in groups for r in group]
    prompts = [f"prompt {i}" for i, group in enumerate(groups) for _ in group]
    ids = [torch.tensor([1])] * len(responses)
    return Candidates(prompts, ids, responses, ids, num_per_prompt=n)


def test_self_consistency_scores_are_vote_shares_per_prompt():
    judge = SelfConsistencyJudge()
    scores = judge(candidates([[" 1 2", "1 2 ", " 2 1", " 1 2"], [" 3", " 4", " 5", " 3"]])).scores[:, 0]
    # " 1 2" and "1 2 " are the same stripped answer: 3 of 4 votes; prompts never vote for each other's answers
    assert scores.tolist() == [0.75, 0.75, 0.25, 0.75, 0.5, 0.25, 0.25, 0.5]


def test_self_consistency_answer_key_and_unanswered_candidates():
    judge = SelfConsistencyJudge(answer_key=answer_key)  # the sort task's digits; None for a non-answer
    scores = judge(candidates([[" 1 2", "1  2", "oops", " 2 1"]])).scores[:, 0]
    assert scores[:2].tolist() == [0.5, 0.5]  # share over all N candidates, the unanswered one included
    assert math.isnan(scores[2]) and scores[3] == 0.25


def test_self_consistency_refuses_groups_that_do_not_split():
    bad = candidates([[" 1", " 2"]])
    bad.num_per_prompt = 3
    with pytest.raises(ValueError, match="groups of 3"):
        SelfConsistencyJudge()(bad)


@pytest.mark.parametrize(
    "chosen, rejected, min_share, keep",
    [
        ([5, 5, 4], [1, 0, 2], 1.0, True),  # every judgement of the chosen beats every judgement of the rejected
        ([5, 2, 5], [1, 3, 1], 1.0, False),  # one chosen judgement (2) is below one rejected judgement (3)
        ([5, 2, 5], [1, 3, 1], 0.75, True),  # 8 of 9 comparisons agree
        ([5, NAN, NAN], [1, NAN, 0], 1.0, True),  # judgements without a score are left out
        ([NAN, NAN, NAN], [1, 1, 1], 1.0, False),  # nothing to compare: not a consistent pair
    ],
)
def test_judgements_agree(chosen, rejected, min_share, keep):
    assert JudgementsAgree(min_share)(torch.tensor(chosen, dtype=torch.float), torch.tensor(rejected, dtype=torch.float)) is keep


def test_vote_margin_filter_and_its_config():
    assert MarginAtLeast(0.25)(torch.tensor([0.5]), torch.tensor([0.25]))
    assert not MarginAtLeast(0.5)(torch.tensor([0.5]), torch.tensor([0.25]))
    config = SelfConsistencyDPOConfig(prompt_dataset=["sort 1 2:"], num_preference_pairs=1, num_train_steps=1,
                                      min_vote_margin=0.25)
    assert [f.name for f in config.pair_filters] == ["vote_margin"]
    with pytest.raises(ValueError, match="min_vote_margin"):
        SelfConsistencyDPOConfig(prompt_dataset=["x"], num_preference_pairs=1, num_train_steps=1, min_vote_margin=2)
    with pytest.raises(TypeError, match="pair_filters\\[0\\]"):
        PairGenerationConfig(num_preference_pairs=1, pair_filters=(lambda c, r: True,))


def test_stats_count_drops_per_filter_and_add_up():
    a, b = PairGenerationStats(pairs_filtered={"x": 1}), PairGenerationStats(pairs_filtered={"x": 2, "y": 1})
    a.add(b)
    assert a.pairs_filtered == {"x": 3, "y": 1}
    assert a.summary()["pairs_filtered/x"] == 3


def test_pair_generation_drops_pairs_whose_judgements_disagree(make_transformer, tmp_path):
    """A judge with one noisy judgement out of two: the filter drops exactly the pairs whose judgements cross."""

    class ScriptedJudge:
        num_judgements = 2

        def __call__(self, cands, seed=None):
            n = len(cands.responses)
            # candidate j of each prompt scores (j, j) except candidate 0, scored (0, 9): its order is not agreed on
            scores = torch.tensor([[float(i % 4), float(i % 4)] for i in range(n)])
            scores[::4, 1] = 9.0
            from self_rewarding_lm_pytorch.judging.judges import Judgements
            return Judgements(scores)

        def is_valid_score(self, score):
            return True

    model = make_transformer(seed=0, num_tokens=CharTokenizer.num_tokens, max_seq_len=32, dim=16)
    config = PairGenerationConfig(num_preference_pairs=8, num_candidate_responses=4, prompt_batch_size=4,
                                  response_max_new_tokens=4, pair_filters=(JudgementsAgree(),))
    with pytest.raises(PairGenerationError, match="8 dropped by pair filters") as error:
        generate_preference_pairs(model, SortDigitsTask(seed=0).prompts(8), ScriptedJudge(), config,
                                  folder=tmp_path, tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                                  accelerator=Accelerator(cpu=True), eos_id=TOKENIZER.eos_id)
    # means: candidate 0 has 4.5 (chosen), candidate 1 has 1 (rejected); its judgements 0 and 9 vs 1 and 1 cross
    assert error.value.stats.pairs_made == 0 and error.value.stats.pairs_filtered == {"judgements_agree": 8}

    # without the noisy judgement every prompt gives a pair
    class Agreeing(ScriptedJudge):
        def __call__(self, cands, seed=None):
            judgements = super().__call__(cands, seed)
            judgements.scores[::4, 1] = 3.5
            return judgements

    stats = generate_preference_pairs(model, SortDigitsTask(seed=0).prompts(8), Agreeing(), config,
                                      folder=tmp_path / "agreeing", tokenizer_encode=TOKENIZER.encode,
                                      tokenizer_decode=TOKENIZER.decode, accelerator=Accelerator(cpu=True),
                                      eos_id=TOKENIZER.eos_id)
    assert stats.pairs_made == 8 and stats.pairs_filtered == {}


def test_margin_weighted_loss_weights_each_pair(make_transformer):
    model = make_transformer(seed=0, num_tokens=16, max_seq_len=16, dim=16)
    torch.manual_seed(0)
    items = [dict(chosen=torch.randint(0, 16, (6,)), rejected=torch.randint(0, 16, (6,)), prompt_len=2,
                  chosen_ref_logp=-3.0, rejected_ref_logp=-2.0, chosen_reward=c, rejected_reward=r)
             for c, r in [(0.75, 0.25), (1.0, 0.0)]]
    for item in items:
        item["rejected"][:2] = item["chosen"][:2]
    dpo = DPO(model, 0.1, precomputed_reference=True, nll_weight=1.0)
    plain = dpo.pair_values(**DPOCollate(-1)(items))["loss"]
    weighted_batch = DPOCollate(-1, margin_weights=True)(items)
    assert weighted_batch["weight"].tolist() == [0.5, 1.0]
    weighted = dpo.pair_values(**weighted_batch)["loss"]
    torch.testing.assert_close(weighted, plain * torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="chosen_reward"):
        DPOCollate(-1, margin_weights=True)([{k: v for k, v in items[0].items() if k != "chosen_reward"}])


def test_own_answer_judge_examples_are_labelled_once_balanced_and_parse(make_transformer):
    model = make_transformer(seed=0, num_tokens=CharTokenizer.num_tokens, max_seq_len=64, dim=16)
    reward_config = RewardConfig(prompt_template="judge {{ prompt }}{{ response }}|", reward_regex_template="Score: {{ reward }}")
    calls = []

    def labeller(prompt, response):
        calls.append((prompt, response))
        return len(calls) % 3 == 0  # a third of the distinct answers are "right"

    prompts = SortDigitsTask(seed=0).prompts(12)
    judge_set = own_answer_judge_examples(model, prompts, labeller=labeller, reward_config=reward_config,
                                          tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                                          num_samples=3, max_new_tokens=4, temperature=1.0, eos_id=TOKENIZER.eos_id)
    assert judge_set.answers_sampled == 36
    assert len(calls) == len(set(calls)) == judge_set.distinct_answers  # each distinct answer labelled once
    before = judge_set.label_counts_before_balancing
    assert before["Score: 5"] < before["Score: 0"]
    assert judge_set.target_counts == {"Score: 5": before["Score: 5"], "Score: 0": before["Score: 5"]}
    seq, prompt_len = judge_set.examples[0]
    text = TOKENIZER.decode(seq[prompt_len:])
    assert seq[-1] == TOKENIZER.eos_id and reward_config.parse(text) in (0.0, 5.0)
    assert TOKENIZER.decode(seq[:prompt_len]).startswith("judge sort ")
    # the labelled answers behind the examples (for meta-judge examples): one per example, labelled as the labeller said
    assert len(judge_set.labelled) == len(judge_set.examples)
    labels = dict(zip(calls, [(i + 1) % 3 == 0 for i in range(len(calls))]))  # what the labeller said, call by call
    assert all(label == labels[(prompt, answer)] for prompt, answer, label in judge_set.labelled)
    assert sum(label for *_, label in judge_set.labelled) == judge_set.target_counts["Score: 5"]

    with pytest.raises(ValueError, match="does not parse"):
        own_answer_judge_examples(model, prompts[:2], labeller=labeller, reward_config=reward_config,
                                  targets=two_point_targets("right", "wrong"), tokenizer_encode=TOKENIZER.encode,
                                  tokenizer_decode=TOKENIZER.decode, max_new_tokens=2)


def test_own_answer_judge_examples_sample_through_the_given_backend(make_transformer):
    """`sampler`: the answers come from the generation backend passed in (a vLLM one for judge data from a
    HuggingFace model), which is released once they are sampled; the default is the library's own sampler, draw for
    draw."""
    from self_rewarding_lm_pytorch.generation.backend import LibrarySampler

    model = make_transformer(seed=0, num_tokens=CharTokenizer.num_tokens, max_seq_len=64, dim=16)
    reward_config = RewardConfig(prompt_template="judge {{ prompt }}{{ response }}|", reward_regex_template="Score: {{ reward }}")
    prompts = SortDigitsTask(seed=0).prompts(6)

    class Recording(LibrarySampler):
        def __init__(self, answers=None):
            self.calls, self.released, self.answers = [], 0, answers

        def __call__(self, net, prompts, seq_len=None, *args, **kwargs):
            self.calls.append(dict(kwargs, rows=len(prompts)))
            if self.answers is None:
                return super().__call__(net, prompts, seq_len, *args, **kwargs)
            rows = [TOKENIZER.encode(self.answers[i % 2]) for i in range(len(prompts) * kwargs["num_samples"])]
            return torch.stack(rows)

        def release(self):
            self.released += 1

    def make(**kwargs):
        return own_answer_judge_examples(model, prompts, labeller=lambda p, r: sum(map(ord, r)) % 2 == 0,
                                         reward_config=reward_config,
                                         tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                                         num_samples=2, max_new_tokens=4, temperature=(0.0, 1.0), batch_size=4,
                                         eos_id=TOKENIZER.eos_id, seed=3, **kwargs)

    canned = Recording(answers=(" 1", " 2"))
    judge_set = make(sampler=canned)
    assert sorted({answer for _, answer, _ in judge_set.labelled}) == [" 1", " 2"]  # only the backend's answers
    assert [(c["temperature"], c["num_samples"], c["rows"], c["generator"]) for c in canned.calls] == [
        (0.0, 1, 4, 3), (0.0, 1, 2, 7), (1.0, 2, 4, 3), (1.0, 2, 2, 7)]  # per batch: greedy once, sampled twice
    assert canned.released == 1

    wrapped = Recording()
    default, through = make(), make(sampler=wrapped)
    assert len(wrapped.calls) == 4 and wrapped.released == 1
    assert through.labelled == default.labelled
    assert all(torch.equal(a, b) and n == m for (a, n), (b, m) in zip(through.examples, default.examples, strict=True))


def test_own_answer_judge_examples_refuse_a_single_label(make_transformer):
    model = make_transformer(seed=0, num_tokens=CharTokenizer.num_tokens, max_seq_len=64, dim=16)
    reward_config = RewardConfig(prompt_template="j {{ prompt }}{{ response }}|", reward_regex_template="Score: {{ reward }}")
    with pytest.raises(ValueError, match="same judge target 'Score: 0'.*temperature"):
        own_answer_judge_examples(model, SortDigitsTask(seed=0).prompts(4), labeller=lambda p, r: False,
                                  reward_config=reward_config, tokenizer_encode=TOKENIZER.encode,
                                  tokenizer_decode=TOKENIZER.decode, max_new_tokens=3, temperature=(0.0, 1.0))


def test_labelled_judge_examples_render_prompt_rationale_target_and_eos_in_order():
    reward_config = RewardConfig(prompt_template="j {{ prompt }}{{ response }}|", reward_regex_template="Score: {{ reward }}")
    labelled = [("p1", " a", True), ("p2", " b", False)]
    examples = labelled_judge_examples(labelled, reward_config=reward_config, tokenizer_encode=TOKENIZER.encode,
                                       rationale=lambda p, r: f"<{r.strip()}> ", eos_id=TOKENIZER.eos_id)
    expected = [("j p1 a|", "<a> Score: 5"), ("j p2 b|", "<b> Score: 0")]
    for (ids, prompt_len), (judge_prompt, target) in zip(examples, expected, strict=True):
        assert ids.tolist() == TOKENIZER.encode(judge_prompt + target).tolist() + [TOKENIZER.eos_id]
        assert prompt_len == len(judge_prompt)


class MarkerJudge(nn.Module):
    """A judge that reads its input, not weights: after the judge prompt's closing '|' it writes "Score: 5" when the
    answer holds a 'Y', "no idea" when it holds a 'Z' (no score), else "Score: 0"; then EOS."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        logits = torch.full((*ids.shape, CharTokenizer.num_tokens), -1e4)
        for r, row in enumerate(ids.tolist()):
            bar = row.index(ord("|"))  # the first: a shorter prompt in a batch is padded after it
            answer = row[:bar]
            says = "no idea" if ord("Z") in answer else "Score: 5" if ord("Y") in answer else "Score: 0"
            for i in range(len(row)):
                k = i - bar
                logits[r, i, ord(says[k]) if 0 <= k < len(says) else TOKENIZER.eos_id] = 0.0
        return logits + self.unused


def test_judge_mistakes_are_the_answers_whose_judgement_misses_the_labels_score():
    reward_config = RewardConfig(prompt_template="j {{ prompt }}{{ response }}|", reward_regex_template="Score: {{ reward }}")
    labelled = [
        ("p", " 1Y", True),  # judged 5, right: no mistake
        ("p", " 2Y", False),  # judged 5, wrong: passed a wrong answer
        ("p", " 3", False),  # judged 0, wrong: no mistake
        ("p", " 4", True),  # judged 0, right: failed a right answer
        ("p", " 5Z", False),  # no score at all: a mistake whatever the label
    ]
    assert judge_mistakes(MarkerJudge(), labelled, reward_config=reward_config, tokenizer_encode=TOKENIZER.encode,
                          tokenizer_decode=TOKENIZER.decode, max_new_tokens=10,
                          eos_id=TOKENIZER.eos_id) == [False, True, False, True, True]
    assert judge_mistakes(MarkerJudge(), [], reward_config=reward_config, tokenizer_encode=TOKENIZER.encode,
                          tokenizer_decode=TOKENIZER.decode) == []
