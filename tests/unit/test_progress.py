"""Every long phase shows a bar on the main process: pair generation (pairs made toward the target, prompts tried,
parse and tie rates), SPIN's answers and reference log-probs; a bar ends at its total or says why it halted."""

import re
from typing import ClassVar

import pytest
import torch
from accelerate import Accelerator
from helpers import generate, sort_pairs
from tqdm.auto import tqdm

import self_rewarding_lm_pytorch.pairs.loop as pair_loop
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.judging.judges import RewardFnJudge, SelfJudge
from self_rewarding_lm_pytorch.pairs.records import MadeBatch, PairKind, PreferencePair
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError, PairGenerationStats
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.dpo import DPOTrainer
from self_rewarding_lm_pytorch.training.early_stopping import EarlyStopper

TOKENIZER = CharTokenizer()


def test_pair_generation_shows_prompts_pairs_parse_and_tie_rates(char_model, tmp_path, capsys):
    generate(char_model, SortDigitsTask(seed=1).prompts(16), RewardFnJudge(lambda p, r: float(sum(map(ord, r)))), tmp_path,
             num_preference_pairs=3)
    err = capsys.readouterr().err
    assert "pairs:" in err and ("pair/s" in err or "s/pair" in err)
    # pairs out of the target; prompts out of the budget; each line's fields are those of the pairs it counts
    done = [line for line in err.replace("\r", "\n").splitlines() if "3/3 [" in line]
    assert done and len({re.search(r"prompts=\d+/16, parse=1.00, ties=0.00, identical=0]", line)[0] for line in done}) == 1


def test_pair_generation_that_gives_up_early_says_why(char_model, tmp_path, capsys):
    judge = SelfJudge(char_model, RewardConfig("{{ prompt }}|{{ response }}|"), tokenizer_encode=TOKENIZER.encode,
                      tokenizer_decode=TOKENIZER.decode, num_judgements=1, max_new_tokens=4, eos_id=0)
    with pytest.raises(PairGenerationError):
        generate(char_model, SortDigitsTask(seed=2).prompts(40), judge, tmp_path, fail_fast_after_prompts=8)
    assert "pair generation stops early: no usable judgement in 8 prompts (fail_fast_after_prompts=8)" in \
        "".join(capsys.readouterr())


def test_judge_examples_from_own_answers_and_judge_mistakes_show_bars_unless_told_not_to(char_model, capsys):
    from self_rewarding_lm_pytorch.judging.eft import judge_mistakes, own_answer_judge_examples

    reward_config = RewardConfig("j {{ prompt }}{{ response }}|", reward_regex_template="Score: {{ reward }}")
    prompts = SortDigitsTask(seed=3).prompts(6)

    def run(show_progress):
        judge_set = own_answer_judge_examples(
            char_model, prompts, labeller=lambda p, r: sum(map(ord, r)) % 2 == 0, reward_config=reward_config,
            tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode, num_samples=2, max_new_tokens=3,
            temperature=(0.0, 1.0), balance=False, eos_id=0, batch_size=4, show_progress=show_progress)
        judge_mistakes(char_model, judge_set.labelled, reward_config=reward_config, tokenizer_encode=TOKENIZER.encode,
                       tokenizer_decode=TOKENIZER.decode, max_new_tokens=3, eos_id=0, batch_size=4,
                       show_progress=show_progress)
        return capsys.readouterr().err

    err = run(True)
    assert "judge examples: answers" in err and "4/4" in err  # 2 temperatures x 2 batches of prompts
    assert "judge mistakes" in err
    quiet = run(False)
    assert "judge examples" not in quiet and "judge mistakes" not in quiet


class RecordedBar(tqdm):
    """The pair loop's bar, kept with its writes for the tests to read once the loop is done."""

    bars: ClassVar[list] = []
    writes: ClassVar[list] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shown = []  # (n, postfix) at each update: what a refresh at that moment displays
        RecordedBar.bars.append(self)

    def update(self, n=1):
        super().update(n)
        self.shown.append((self.n, self.postfix))

    @classmethod
    def write(cls, text, *args, **kwargs):
        cls.writes.append(text)


@pytest.fixture
def recorded_bar(monkeypatch):
    RecordedBar.bars, RecordedBar.writes = [], []
    monkeypatch.setattr(pair_loop, "tqdm", RecordedBar)
    return RecordedBar


def digit_count(prompt: str, response: str) -> float:
    return float(sum(c.isdigit() for c in response))


def test_the_pair_bar_counts_pairs_toward_the_target_and_ends_at_it(char_model, tmp_path, recorded_bar):
    stats = generate(char_model, SortDigitsTask(seed=1).prompts(40), RewardFnJudge(digit_count), tmp_path,
                     num_preference_pairs=3)
    (bar,) = recorded_bar.bars
    assert (bar.total, bar.n, bar.unit) == (3, 3, "pair") and stats.pairs_made == 3
    # the prompts tried are beside it: a few batches of 4, far from the pool of 40 (a bar over the pool would end at
    # a few percent, its ETA the time to try every prompt)
    assert f"prompts={stats.prompts_tried}/40" in bar.postfix and stats.prompts_tried < 40
    assert recorded_bar.writes == []  # it ended at its total: nothing to explain


def test_a_pair_bar_that_runs_out_of_prompts_says_so_and_ends_at_the_pairs_made(char_model, tmp_path, recorded_bar):
    stats = generate(char_model, SortDigitsTask(seed=1).prompts(8), RewardFnJudge(digit_count), tmp_path / "kept",
                     num_preference_pairs=50, accept_fewer_pairs=True)
    (bar,) = recorded_bar.bars
    assert bar.total == 50 and bar.n == stats.pairs_made and 0 < stats.pairs_made < 50
    assert "prompts=8/8" in bar.postfix
    stopped = (f"pair generation stops at {stats.pairs_made}/50 pairs: all 8 prompts of its budget are tried (prompts "
               f"are never reused)")
    assert recorded_bar.writes == [stopped, f"pair generation keeps the {stats.pairs_made} pairs made (accept_fewer_pairs)"]
    recorded_bar.writes.clear()
    with pytest.raises(PairGenerationError):  # not accepted: the bar still says why it halted, then the error
        generate(char_model, SortDigitsTask(seed=1).prompts(8), RewardFnJudge(digit_count), tmp_path / "refused",
                 num_preference_pairs=50)
    assert recorded_bar.writes == [stopped]


class Interrupt(Exception):
    pass


class OnePairPerPrompt:
    """A pair maker without a judge: one pair per prompt, toward `target`; it dies on its `dies_on`-th call."""

    name, description, unusable = "test pairs", "test pairs", "nothing"

    def __init__(self, target, dies_on=None):
        self.kinds = (PairKind("actor", target, PairGenerationStats, "stats", "pairs"),)
        self.calls, self.dies_on = 0, dies_on

    def __call__(self, prompts, prompt_indices, seed):
        self.calls += 1
        if self.calls == self.dies_on:
            raise Interrupt
        pairs = []
        for prompt, index in zip(prompts, prompt_indices):
            ids = TOKENIZER.encode(prompt)
            pairs.append(PreferencePair(
                chosen=torch.cat([ids, TOKENIZER.encode(" 1 2")]), rejected=torch.cat([ids, TOKENIZER.encode(" 2")]),
                prompt_len=len(ids), chosen_score=1.0, rejected_score=0.0, kind="actor", record={"prompt_index": index}))
        return MadeBatch(pairs, {"actor": PairGenerationStats(prompts_tried=len(prompts))})

    def gives_up(self, counts):
        return False

    def postfix(self, made, counts):
        return {}

    def check_shortfall(self, made, counts, cursor, budget, examples):
        pass


def test_a_resumed_pair_bar_starts_at_the_pairs_already_made(char_model, tmp_path, recorded_bar):
    prompts = SortDigitsTask(seed=9).prompts(20)

    def run(maker):
        return pair_loop.run_pair_loop(
            maker, prompts, model=char_model, folder=tmp_path, accelerator=Accelerator(cpu=True), budget=len(prompts),
            prompt_batch_size=2, fail_fast_after_prompts=64, max_seq_len=48, pad_id=-1, logp_reduction="sum", seed=4,
            fingerprint=None, logger=None)

    with pytest.raises(Interrupt):
        run(OnePairPerPrompt(target=7, dies_on=3))  # two batches of 2 prompts committed: 4 pairs
    assert len(DPODataset(tmp_path)) == 4
    run(OnePairPerPrompt(target=7))
    interrupted, resumed = recorded_bar.bars
    assert (interrupted.total, interrupted.n) == (7, 4)
    assert (resumed.total, resumed.initial, resumed.n) == (7, 4, 7)  # from the stored pairs to the target
    # each update shows the prompts tried for the pairs it counts; the last batch makes 2 pairs, the bar keeps 1
    assert resumed.shown == [(6, "prompts=6/20"), (7, "prompts=8/20")]
    assert recorded_bar.writes == []


def test_a_dpo_run_resumed_after_it_stopped_early_says_why_its_bar_is_short(make_transformer, tmp_path, capsys):
    def train():
        scores = iter([1.0, 2.0, 3.0])
        stopper = EarlyStopper(lambda model: next(scores), mode="min", patience=1)
        DPOTrainer(make_transformer(num_tokens=128), sort_pairs(16, seed=0), batch_size=8, num_train_steps=50,
                   early_stopper=stopper, early_stop_every=1, checkpoint_every=50, checkpoint_folder=tmp_path,
                   accelerate_kwargs={"cpu": True})()
        return "".join(capsys.readouterr())

    first = train()
    assert "dpo: early stop at step 2" in first and "2/50" in first
    again = train()  # the saved state is finished: the bar shows 2/50 and says why
    assert "2/50" in again and "dpo: the saved state stopped early at step 2 (early stopping); nothing left to train" in again
