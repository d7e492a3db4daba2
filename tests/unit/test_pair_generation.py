
import json

import pytest
import torch
from accelerate import Accelerator
from helpers import generate
from torch import nn

from self_rewarding_lm_pytorch.data.datasets import pad_right
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.judging.judges import RewardFnJudge, RewardModelJudge, SelfJudge
from self_rewarding_lm_pytorch.pairs.loop import run_pair_loop
from self_rewarding_lm_pytorch.pairs.records import MadeBatch, PairKind, PreferencePair
from self_rewarding_lm_pytorch.pairs.selection import best_and_worst
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError, PairGenerationStats
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.logprobs import model_sequence_logprobs, response_mask

NAN = float("nan")
TOKENIZER = CharTokenizer()


def digit_count(prompt: str, response: str) -> float:
    """A reward that separates an untrained model's random answers: how many digits they hold."""
    return float(sum(c.isdigit() for c in response))


@pytest.mark.parametrize(
    "rewards, expected",
    [
        ([1.0, 3.0, 2.0], [1, 0]),  # best vs worst
        ([2.0, 2.0, 2.0], [-1, -1]),  # all tied: no pair (paper)
        ([NAN, 4.0, NAN], [-1, -1]),  # one scored candidate: no pair
        ([NAN, 4.0, 1.0], [1, 2]),  # unscored candidates are ignored
        ([NAN, NAN, NAN], [-1, -1]),
    ],
)
def test_best_and_worst(rewards, expected):
    assert best_and_worst(torch.tensor([rewards])).tolist() == [expected]


def test_reward_fn_pairs_on_disk_with_reference_logps(char_model, tmp_path):
    prompts = SortDigitsTask(seed=1).prompts(16)
    stats = generate(char_model, prompts, RewardFnJudge(digit_count), tmp_path / "pairs")

    pairs = DPODataset(tmp_path / "pairs")
    assert len(pairs) == 4 and stats.pairs_made == 4 and pairs.meta["complete"]
    records = pairs.records()
    assert len({r["prompt_index"] for r in records}) == 4  # one pair per prompt, no prompt twice
    for index, record in enumerate(records):
        item = pairs[index]
        assert record["chosen_score"] > record["rejected_score"]
        assert record["chosen_score"] == digit_count("", record["chosen"])
        chosen = item["chosen"][item["chosen"] != -1]
        assert TOKENIZER.decode(chosen[: item["prompt_len"]]) == record["prompt"]

    # the stored reference log-probs are the generating model's own, recomputed here independently
    seqs = [pairs[i][name][pairs[i][name] != -1] for i in range(len(pairs)) for name in ("chosen", "rejected")]
    ids, is_padding = pad_right(seqs, -1)
    prompt_len = torch.tensor([pairs[i]["prompt_len"] for i in range(len(pairs)) for _ in range(2)])
    char_model.eval()
    with torch.no_grad():
        expected = model_sequence_logprobs(char_model, ids, response_mask(ids, prompt_len, is_padding))
    stored = torch.stack([pairs[i][f"{name}_ref_logp"] for i in range(len(pairs)) for name in ("chosen", "rejected")])
    torch.testing.assert_close(stored, expected, atol=1e-4, rtol=1e-4)


class MeanTokenScorer(nn.Module):
    """A reward model: mean token id of the non-padding part, with optional class-logit output."""

    def __init__(self, classes: int | None = None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.classes = classes

    def forward(self, ids, mask):
        mean = (ids * mask).sum(-1) / mask.sum(-1) * self.scale
        if self.classes is None:
            return mean
        return torch.stack([-mean, mean], dim=-1) / 100  # class 1 more likely for larger ids


@pytest.mark.parametrize("classes", [None, 2])
def test_reward_model_judge(char_model, tmp_path, classes):
    stats = generate(char_model, SortDigitsTask(seed=2).prompts(16), RewardModelJudge(MeanTokenScorer(classes)), tmp_path)
    records = DPODataset(tmp_path).records()
    assert stats.pairs_made == 4 and all(r["chosen_score"] > r["rejected_score"] for r in records)


def test_reward_model_with_wrong_output_shape_is_explained(char_model, tmp_path):
    class LanguageModel(nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 7)

    with pytest.raises(ValueError, match=r"returned shape .* not a reward"):
        generate(char_model, SortDigitsTask(seed=2).prompts(8), RewardModelJudge(LanguageModel()), tmp_path)


def test_untrained_judge_gives_a_bounded_error_with_counts(char_model, tmp_path):
    judge = SelfJudge(char_model, RewardConfig("{{ prompt }}|{{ response }}|"), tokenizer_encode=TOKENIZER.encode,
                      tokenizer_decode=TOKENIZER.decode, num_judgements=2, max_new_tokens=8, eos_id=0)
    with pytest.raises(PairGenerationError, match="never produced a score") as error:
        generate(char_model, SortDigitsTask(seed=3).prompts(40), judge, tmp_path, fail_fast_after_prompts=8)
    stats = error.value.stats
    # it gave up after the fail-fast budget (two batches of 4), not after every prompt, and said so
    assert stats.prompts_tried == 8 and stats.judgements == 8 * 4 * 2 and stats.judgements_parsed == 0
    # no pair was made: accept_fewer_pairs could not help, so it is not suggested
    assert "trying 8 prompts" in str(error.value) and "accept_fewer_pairs" not in str(error.value)


def checksum(prompt: str, response: str) -> float:
    """A reward under which random answers (almost) never tie."""
    return float(sum(map(ord, response)))


def test_out_of_prompts_is_an_error_unless_fewer_pairs_are_accepted(char_model, tmp_path):
    prompts = SortDigitsTask(seed=4).prompts(3)
    with pytest.raises(PairGenerationError, match="made 3 of 5 .* prompts ran out"):
        generate(char_model, prompts, RewardFnJudge(checksum), tmp_path / "a", num_preference_pairs=5)

    stats = generate(char_model, prompts, RewardFnJudge(checksum), tmp_path / "b", num_preference_pairs=5,
                     accept_fewer_pairs=True)
    assert stats.pairs_made == 3 and len(DPODataset(tmp_path / "b")) == 3


def test_invalid_scores_and_pairs_are_counted_not_fatal_to_the_batch(char_model, tmp_path):
    prompts = SortDigitsTask(seed=5).prompts(16)
    stats = generate(
        char_model, prompts, RewardFnJudge(digit_count), tmp_path, num_preference_pairs=2,
        is_valid_reward=lambda r: r <= 3, is_valid_reward_pair=lambda c, r: c - r >= 2,
    )
    assert stats.pairs_made == 2
    assert stats.judgements_valid < stats.judgements_parsed or stats.pairs_rejected > 0
    assert all(r["chosen_score"] - r["rejected_score"] >= 2 for r in DPODataset(tmp_path).records())


class Interrupt(Exception):
    pass


CRASH = dict(after_calls=None, calls=0)


def dies_when_told(prompt, response):
    CRASH["calls"] += 1
    if CRASH["after_calls"] is not None and CRASH["calls"] > CRASH["after_calls"]:
        raise Interrupt
    return digit_count(prompt, response)


def test_resume_after_interruption_gives_the_same_pairs(char_model, tmp_path):
    prompts = SortDigitsTask(seed=6).prompts(32)
    generate(char_model, prompts, RewardFnJudge(dies_when_told), tmp_path / "whole", num_preference_pairs=10)
    CRASH["calls"] = 0

    # the same judge function both times (another one would be another plan, refused): it dies when told to
    CRASH["after_calls"] = 2 * 4 * 4 + 5  # two batches of 4 prompts x 4 candidates, then part of the third
    with pytest.raises(Interrupt) as error:
        generate(char_model, prompts, RewardFnJudge(dies_when_told), tmp_path / "resumed", num_preference_pairs=10)
    assert "raised by reward_fn dies_when_told on prompt 'sort" in error.value.__notes__[0]
    assert 0 < len(DPODataset(tmp_path / "resumed")) < 10
    CRASH["after_calls"] = None
    generate(char_model, prompts, RewardFnJudge(dies_when_told), tmp_path / "resumed", num_preference_pairs=10)

    whole, resumed = DPODataset(tmp_path / "whole"), DPODataset(tmp_path / "resumed")
    assert len(resumed) == 10 and resumed.records() == whole.records()
    assert len({r["prompt_index"] for r in resumed.records()}) == 10


def test_verifier_diagnostics(char_model, tmp_path):
    stats = generate(char_model, SortDigitsTask(seed=7).prompts(16), RewardFnJudge(digit_count), tmp_path,
                     verifier=lambda p, r: digit_count(p, r) >= 2)
    summary = stats.summary()
    # the judge is the verifier's own score: every strict comparison agrees, and chosen is never verified worse
    assert stats.verifier_comparisons > 0 and summary["judge_verifier_agreement"] == 1.0
    assert stats.pairs_verified_worse == 0
    assert stats.pairs_verified_better <= stats.pairs_made == 4  # counted over the pairs kept, not every pair made


def test_a_judge_prompt_too_long_for_the_model_names_the_lengths_and_the_fixes(char_model, tmp_path):
    judge = SelfJudge(char_model, RewardConfig("{{ prompt }} is rated here: {{ response }}|"),
                      tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode, max_new_tokens=20, eos_id=0)
    with pytest.raises(ValueError, match=r"judge prompt is \d+ tokens; .* needs \d+ positions, but the model has "
                                         r"max_seq_len 48. Use a shorter RewardConfig prompt"):
        generate(char_model, SortDigitsTask(seed=9).prompts(8), judge, tmp_path)


def test_a_changed_plan_does_not_reuse_the_pairs_on_disk(char_model, tmp_path):
    """Resuming with fewer prompts (every prompt_index now points elsewhere) or with another reward function is
    refused, naming what changed; the original reused the old pairs."""
    prompts = SortDigitsTask(seed=9).prompts(32)
    CRASH.update(after_calls=2 * 4 * 4, calls=0)  # killed after two batches
    with pytest.raises(Interrupt):
        generate(char_model, prompts, RewardFnJudge(dies_when_told), tmp_path, num_preference_pairs=10)
    CRASH.update(after_calls=None)
    with pytest.raises(ValueError, match=r"different plan \(changed: prompts\)"):
        generate(char_model, prompts[4:], RewardFnJudge(dies_when_told), tmp_path, num_preference_pairs=10)
    with pytest.raises(ValueError, match=r"different plan \(changed: judge\)"):
        generate(char_model, prompts, RewardFnJudge(lambda p, r: -digit_count(p, r)), tmp_path, num_preference_pairs=10)
    generate(char_model, prompts, RewardFnJudge(dies_when_told), tmp_path, num_preference_pairs=10)  # same plan: resumes
    assert len(DPODataset(tmp_path)) == 10


def test_infinite_scores_are_written_as_valid_json(char_model, tmp_path):
    def strict(constant):
        raise ValueError(f"{constant} is not JSON")

    generate(char_model, SortDigitsTask(seed=10).prompts(16), RewardFnJudge(lambda p, r: float("inf") if "1" in r else 0.0),
             tmp_path, is_valid_reward=lambda s: True, accept_fewer_pairs=True)
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=strict) for line in lines]
    assert any(r["chosen_score"] == "inf" for r in records)


class FakeMaker:
    """A pair maker without a judge: each prompt gives an actor pair, each odd-indexed prompt a judge pair too, the
    verifier calling every chosen side right. It dies on its `dies_on`-th call."""

    name, description, unusable = "fake pair generation", "fake pairs", "nothing usable"
    kinds = (PairKind("actor", 5, PairGenerationStats, "stats", "pairs"),
             PairKind("judge", 3, PairGenerationStats, "judge_stats", "judge_pairs"))

    def __init__(self, dies_on=None):
        self.seeds, self.dies_on = [], dies_on

    def __call__(self, prompts, prompt_indices, seed):
        self.seeds.append(seed)
        if len(self.seeds) == self.dies_on:
            raise Interrupt
        pairs = []
        for prompt, index in zip(prompts, prompt_indices):
            prompt_ids = TOKENIZER.encode(prompt)
            for kind in ("actor", "judge")[: 1 + index % 2]:
                pairs.append(PreferencePair(
                    chosen=torch.cat([prompt_ids, TOKENIZER.encode(" 1 2")]), rejected=torch.cat([prompt_ids, TOKENIZER.encode(" 2")]),
                    prompt_len=len(prompt_ids), chosen_score=1.0, rejected_score=0.0, kind=kind, chosen_verified=1.0,
                    rejected_verified=0.0, record=dict(kind=kind, prompt_index=index, seed=seed)))
        return MadeBatch(pairs, dict(actor=PairGenerationStats(prompts_tried=len(prompts)), judge=PairGenerationStats()))

    def gives_up(self, counts):
        return False

    def postfix(self, made, counts):
        return made

    def check_shortfall(self, made, counts, cursor, budget, examples):
        assert made == dict(actor=5, judge=3)


def test_the_pair_loop_caps_each_kind_and_resumes_after_a_kill_with_the_same_pairs(char_model, tmp_path):
    prompts = SortDigitsTask(seed=9).prompts(40)

    def run(maker, folder):
        return run_pair_loop(maker, prompts, model=char_model, folder=folder, accelerator=Accelerator(cpu=True),
                             budget=len(prompts), prompt_batch_size=2, fail_fast_after_prompts=64, max_seq_len=48,
                             pad_id=-1, logp_reduction="sum", seed=4, fingerprint=None, logger=None)

    whole_maker = FakeMaker()
    counts = run(whole_maker, tmp_path / "whole")
    # the batch seed formula: cursor 0, 2, 4, ... of one process
    assert whole_maker.seeds == [4 * 1_000_003 + cursor * 31 for cursor in range(0, 2 * len(whole_maker.seeds), 2)]
    assert (counts["actor"].pairs_made, counts["judge"].pairs_made) == (5, 3)
    assert counts["actor"].pairs_verified_better == 5 and counts["judge"].pairs_verified_better == 3  # kept pairs only
    whole = DPODataset(tmp_path / "whole")
    assert [r["kind"] for r in whole.records()].count("judge") == 3 and len(whole) == 8
    assert whole.meta["progress"]["prompts_consumed"] == 2 * len(whole_maker.seeds)

    with pytest.raises(Interrupt):
        run(FakeMaker(dies_on=3), tmp_path / "resumed")
    assert DPODataset(tmp_path / "resumed").meta["progress"]["prompts_consumed"] == 4  # two batches committed
    resumed_maker = FakeMaker()
    resumed_counts = run(resumed_maker, tmp_path / "resumed")
    assert resumed_maker.seeds == whole_maker.seeds[2:]  # goes on from the third batch
    resumed = DPODataset(tmp_path / "resumed")
    assert resumed.records() == whole.records() and resumed.fingerprint() == whole.fingerprint()
    assert [vars(c) for c in resumed_counts.values()] == [vars(c) for c in counts.values()]
    assert torch.equal(resumed[7]["chosen_ref_logp"], whole[7]["chosen_ref_logp"])
