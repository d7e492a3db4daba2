"""The Meta-Rewarding stage end to end, with a tiny model fine-tuned to the three formats (answer, judgement,
verdict): both kinds of pairs made, stored with the meta-judge's outputs, trained on in one DPO run; a kill
mid-generation resumes with nothing lost; a meta-judge that never gives a readable verdict ends with the counts."""

import json
import random
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import tiny_transformer

from self_rewarding_lm_pytorch import (
    MetaJudgeConfig,
    MetaRewardDPOConfig,
    PairGenerationError,
    RewardConfig,
    SelfRewardingTrainer,
)
from self_rewarding_lm_pytorch.data.datasets import pad_right
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler
from self_rewarding_lm_pytorch.judging.eft import meta_judge_examples
from self_rewarding_lm_pytorch.judging.judges import SelfJudge
from self_rewarding_lm_pytorch.judging.meta_judge import MetaJudge
from self_rewarding_lm_pytorch.pairs.meta_reward import generate_meta_reward_pairs
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask, is_correct

TOKENIZER = CharTokenizer()
REWARD = RewardConfig(prompt_template="J{{ prompt }}{{ response }}|", score_range=(0, 5))
META = MetaJudgeConfig(prompt_template="M{{ prompt }}{{ response }}|{{ judgement_a }}|{{ judgement_b }}|")


@pytest.fixture(scope="module")
def formatted_model():
    """A depth-1 model that answers "sort ...:", judges "J..." with "Score: 5|0" and meta-judges "M..." with
    "Winner: A|B", each choice at random: the formats are learned, the judgements are coin flips."""
    torch.manual_seed(0)
    rng = random.Random(0)
    task = SortDigitsTask(length=3, seed=0)
    texts = []
    for ids, prompt_len in task.instruction_examples(64):
        prompt, answer = TOKENIZER.decode(ids[:prompt_len]), TOKENIZER.decode(ids[prompt_len:])
        scores = [f"Score: {rng.choice('05')}" for _ in range(2)]
        texts += [prompt + answer, f"J{prompt}{answer}|{scores[0]}",
                  f"M{prompt}{answer}|{scores[0]}|{scores[1]}|Winner: {rng.choice('AB')}"]
    seqs = [torch.cat([TOKENIZER.encode(t), torch.tensor([TOKENIZER.eos_id])]) for t in texts]
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=64, dim=48, depth=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        batch = [seqs[i] for i in torch.randint(len(seqs), (32,)).tolist()]
        ids, is_padding = pad_right(batch, -1)
        logits = model(ids.clamp(min=0)[:, :-1])
        labels = ids[:, 1:].masked_fill(is_padding[:, 1:], -100)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def stage(**overrides):
    return MetaRewardDPOConfig(**{**dict(
        prompt_dataset=SortDigitsTask(length=3, seed=5).prompts(32), reward_config=REWARD, meta_judge_config=META,
        num_preference_pairs=3, num_judge_pairs=2, num_candidate_responses=2, num_judgements=3, prompt_batch_size=4,
        response_max_new_tokens=8, judge_max_new_tokens=9, meta_judge_max_new_tokens=10, temperature=1.0, top_p=None,
        judge_temperature=1.0, judge_top_p=None, meta_judge_temperature=1.0, length_control=0.5, verifier=is_correct,
        batch_size=4, num_train_steps=2, learning_rate=1e-3, end_learning_rate=1e-4, max_seq_len=64,
    ), **overrides})


def test_meta_reward_stage_trains_on_actor_and_judge_pairs(formatted_model, tmp_path):
    """About 4 s idle."""
    model = formatted_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SelfRewardingTrainer(model, finetune_configs=[stage()], tokenizer_encode=TOKENIZER.encode,
                                   tokenizer_decode=TOKENIZER.decode, eos_id=TOKENIZER.eos_id,
                                   accelerate_kwargs=dict(cpu=True), checkpoints_folder=tmp_path)
    summary = trainer()[0]
    model.load_state_dict(before)  # the fixture is shared

    assert summary["kind"] == "meta-reward-dpo" and summary["actor_pairs"] == 3 and summary["judge_pairs"] == 2
    assert summary["pairs"] == 5 and summary["judge_parse_rate"] > 0.5 and summary["meta_parse_rate"] > 0.5
    trained = torch.load(tmp_path / "stage-00-meta-reward-dpo.pt", weights_only=True)["model"]
    assert any(not torch.equal(trained[k], before[k]) for k in before)  # the DPO run moved the weights

    pairs = DPODataset(tmp_path / "stage-00-meta-reward-dpo.pairs")
    records = pairs.records()
    assert sorted(r["kind"] for r in records) == ["actor"] * 3 + ["judge"] * 2
    for index, record in enumerate(records):
        item = pairs[index]
        chosen = item["chosen"][item["chosen"] != -1]
        prompt, response = TOKENIZER.decode(chosen[: item["prompt_len"]]), TOKENIZER.decode(chosen[item["prompt_len"]:])
        if record["kind"] == "actor":
            assert (prompt, response) == (record["prompt"], record["chosen"])
            assert record["chosen_score"] > record["rejected_score"]
            continue
        # a judge pair: the judge prompt of the answer, then the judgement the meta-judge preferred
        assert prompt == REWARD.render(record["prompt"], record["response"]) == record["judge_prompt"]
        assert response == record["chosen"] and record["chosen"] in record["judgements"]
        assert record["chosen_score"] > record["rejected_score"]  # meta-scores
        assert record["chosen_judgement_score"] != record["rejected_judgement_score"]  # the paper's filter
        asked = record["meta_judge_outputs"]
        assert len(asked) == 6 and {(q["a"], q["b"]) for q in asked} == {(a, b) for a in range(3) for b in range(3) if a != b}
        assert all(q["verdict"] in ("A", "B", None) for q in asked)
        assert float(item["chosen_reward"]) == pytest.approx(record["chosen_score"])


class CountingSampler(LibrarySampler):
    """The library sampler, recording what each call generates: answers ("s..."), judgements ("J", the shared
    prefix) or verdicts ("M...")."""

    def __init__(self):
        self.calls, self.releases = [], 0

    def __call__(self, net, prompts, seq_len=None, *args, **kwargs):
        first = kwargs["shared_prefix"] if kwargs.get("shared_prefix") is not None else prompts[0]
        self.calls.append(TOKENIZER.decode(first[:1]))
        return super().__call__(net, prompts, seq_len, *args, **kwargs)

    def release(self):
        self.releases += 1


def test_answers_judgements_and_verdicts_come_from_the_trainers_generation_backend(formatted_model, tmp_path):
    """Under 1 s idle."""
    before = {k: v.clone() for k, v in formatted_model.state_dict().items()}
    sampler = CountingSampler()
    SelfRewardingTrainer(formatted_model, finetune_configs=[stage()], tokenizer_encode=TOKENIZER.encode,
                         tokenizer_decode=TOKENIZER.decode, eos_id=TOKENIZER.eos_id, accelerate_kwargs=dict(cpu=True),
                         checkpoints_folder=tmp_path, generation_backend=sampler)()
    formatted_model.load_state_dict(before)  # the fixture is shared
    assert set(sampler.calls) == {"s", "J", "M"}
    assert sampler.releases == 1  # after pair generation, before the DPO run


class Logged:
    def __init__(self):
        self.rows = {}

    def log(self, values, step=None):
        self.rows.update(values)


def make_meta_pairs(model, folder, config, meta_judge_config=META, logger=None):
    judge = SelfJudge(model, REWARD, tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                      num_judgements=config.num_judgements, max_new_tokens=config.judge_max_new_tokens,
                      temperature=config.judge_temperature, top_p=None, eos_id=TOKENIZER.eos_id)
    meta_judge = MetaJudge(model, meta_judge_config, tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                           max_new_tokens=config.meta_judge_max_new_tokens, temperature=config.meta_judge_temperature,
                           eos_id=TOKENIZER.eos_id)
    return generate_meta_reward_pairs(model, config, judge, meta_judge, folder=folder, tokenizer_encode=TOKENIZER.encode,
                                      tokenizer_decode=TOKENIZER.decode, judge_encode=TOKENIZER.encode,
                                      accelerator=Accelerator(cpu=True), eos_id=TOKENIZER.eos_id, seed=3, logger=logger)


def test_a_killed_run_resumes_with_nothing_lost(formatted_model, tmp_path, monkeypatch):
    """About 1 s idle."""
    config = stage(num_preference_pairs=6, num_judge_pairs=4)
    logged = Logged()
    whole = make_meta_pairs(formatted_model, tmp_path / "whole", config, logger=logged)
    # each kind counted and logged apart
    assert logged.rows["pairs/pairs_made"] == 6 and logged.rows["judge_pairs/pairs_made"] == 4
    assert {"pairs/parse_rate", "pairs/tie_rate", "judge_pairs/parse_rate", "judge_pairs/verdicts"} <= set(logged.rows)

    calls = []
    original = MetaJudge.__call__

    def killed_on_second_batch(self, queries, seed=None):
        calls.append(len(queries))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the moment of the kill: after the first batch's commit
        return original(self, queries, seed)

    monkeypatch.setattr(MetaJudge, "__call__", killed_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        make_meta_pairs(formatted_model, tmp_path / "killed", config)
    monkeypatch.setattr(MetaJudge, "__call__", original)
    assert DPODataset(tmp_path / "killed").meta["progress"]["prompts_consumed"] == 4  # one batch committed
    resumed = make_meta_pairs(formatted_model, tmp_path / "killed", config)

    assert [asdict_of(s) for s in resumed] == [asdict_of(s) for s in whole]
    assert DPODataset(tmp_path / "killed").records() == DPODataset(tmp_path / "whole").records()
    assert (whole[0].pairs_made, whole[1].pairs_made) == (6, 4)


def asdict_of(stats):
    return json.loads(json.dumps(stats.__dict__))


def test_a_meta_judge_that_never_answers_in_format_ends_with_counts_and_the_fix(formatted_model, tmp_path):
    """Under 1 s idle."""
    config = stage(fail_fast_after_prompts=4, num_judge_pairs=3, accept_fewer_pairs=True)
    unreadable = MetaJudgeConfig(prompt_template=META.prompt_template, verdict_regex_template="Verdict: {{ winner }}")
    with pytest.raises(PairGenerationError, match="never produced a verdict its MetaJudgeConfig can parse") as error:
        make_meta_pairs(formatted_model, tmp_path / "pairs", config, meta_judge_config=unreadable)
    message = str(error.value)
    assert "verdicts asked, 0 parsed" in message and "Winner" in message  # the counts, and what it says instead
    assert error.value.stats.prompts_tried <= 8  # stopped after fail_fast_after_prompts (one batch more at most)


def test_config_errors_name_the_field_and_the_fix(formatted_model, tmp_path):
    """Under 1 s idle."""
    with pytest.raises(ValueError, match="num_judgements must be >= 2"):
        stage(num_judgements=1)
    with pytest.raises(ValueError, match=r"length_control is the paper's rho.*\[0, 1\)"):
        stage(length_control=1.0)
    with pytest.raises(ValueError, match="cannot be combined with a custom pick_paired_rewards"):
        stage(pick_paired_rewards=lambda rewards: rewards)
    with pytest.raises(TypeError, match="meta_judge_config must be a MetaJudgeConfig"):
        stage(meta_judge_config="Winner: {{ winner }}")
    with pytest.raises(ValueError, match="min_meta_margin"):
        stage(min_meta_margin=0)
    assert stage(num_judge_pairs=None).num_judge_pairs == 3  # as many as actor pairs
    with pytest.raises(ValueError, match="num_judge_pairs must be an int >= 1"):
        stage(num_judge_pairs=0)
    # a float cap would only fail when pairs are sliced, after the first batch's generation: its type is checked first
    with pytest.raises(TypeError, match=r"num_judge_pairs must be an int or None, got 768.0 \(float\): pass 768$"):
        stage(num_judge_pairs=768.0)
    # the plan is checked when the trainer is built: the paper's long meta-judge prompt does not fit a 64-token model
    with pytest.raises(ValueError, match=r"finetune_configs\[1\] \(MetaRewardDPOConfig\): the meta-judge prompt .*"
                                         r"\(meta_judge_max_new_tokens\)"):
        SelfRewardingTrainer(formatted_model, finetune_configs=[stage(), stage(meta_judge_config=None)],
                             tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                             eos_id=TOKENIZER.eos_id, accelerate_kwargs=dict(cpu=True), checkpoints_folder=tmp_path)


def test_meta_judge_examples_name_the_right_judgement_in_both_orders():
    """Under 1 s idle."""
    examples = meta_judge_examples([("sort 2 1:", " 1 2", True), ("sort 3 1:", " 3 1", False)], reward_config=REWARD,
                                   meta_judge_config=META, tokenizer_encode=TOKENIZER.encode, eos_id=TOKENIZER.eos_id)
    texts = sorted(TOKENIZER.decode(ids[:prompt_len]) + "=" + TOKENIZER.decode(ids[prompt_len:]) for ids, prompt_len in examples)
    assert texts == [
        "Msort 2 1: 1 2|Score: 0|Score: 5|=Winner: B",  # the answer is right: "Score: 5" is the right judgement
        "Msort 2 1: 1 2|Score: 5|Score: 0|=Winner: A",
        "Msort 3 1: 3 1|Score: 0|Score: 5|=Winner: A",  # wrong: "Score: 0" is
        "Msort 3 1: 3 1|Score: 5|Score: 0|=Winner: B",
    ]
    assert all(ids[-1] == TOKENIZER.eos_id for ids, _ in examples)
    with pytest.raises(ValueError, match="same score"):
        meta_judge_examples([("p", "a", True)], reward_config=REWARD, meta_judge_config=META,
                            tokenizer_encode=TOKENIZER.encode, wrong_targets=lambda label: "Score: 5")


def test_meta_judge_examples_with_wrong_reasoning_add_a_pair_where_one_is_given():
    """`wrong_judgement`: a wrong judgement with its own (wrong) rationale, beside the score-flipped one.
    Under 1 s idle."""

    def wrong_reasoning(prompt, answer, label):
        return "looks wrong Score: 0" if label else None  # none for the wrong answer

    examples = meta_judge_examples([("sort 2 1:", " 1 2", True), ("sort 3 1:", " 3 1", False)], reward_config=REWARD,
                                   meta_judge_config=META, tokenizer_encode=TOKENIZER.encode,
                                   rationale=lambda p, a: "ok ", wrong_judgement=wrong_reasoning, eos_id=TOKENIZER.eos_id)
    texts = sorted(TOKENIZER.decode(ids[:prompt_len]) + "=" + TOKENIZER.decode(ids[prompt_len:]) for ids, prompt_len in examples)
    assert texts == [
        "Msort 2 1: 1 2|looks wrong Score: 0|ok Score: 5|=Winner: B",  # the wrong reasoning, in both orders
        "Msort 2 1: 1 2|ok Score: 0|ok Score: 5|=Winner: B",
        "Msort 2 1: 1 2|ok Score: 5|looks wrong Score: 0|=Winner: A",
        "Msort 2 1: 1 2|ok Score: 5|ok Score: 0|=Winner: A",
        "Msort 3 1: 3 1|ok Score: 0|ok Score: 5|=Winner: A",  # no wrong reasoning given: the score-flipped pair only
        "Msort 3 1: 3 1|ok Score: 5|ok Score: 0|=Winner: B",
    ]
    with pytest.raises(ValueError, match="same score"):
        meta_judge_examples([("p", "a", True)], reward_config=REWARD, meta_judge_config=META,
                            tokenizer_encode=TOKENIZER.encode, wrong_judgement=lambda p, a, label: "still Score: 5")


def test_balanced_wrong_judgements_keep_as_many_wrong_passes_as_wrong_fails():
    """`balance_wrong_judgements`: 4 right answers each get a wrong judgement that fails them, 1 wrong answer one that
    passes it (pair sum's wrong look-ups run about 5:1 so). Balanced, one of each kind is left; the score-flipped
    pairs all stay; unbalanced, every one is there. Under 1 s idle."""

    def wrong_reasoning(prompt, answer, label):
        return "bad Score: 0" if label else ("bad Score: 5" if answer == " 9" else None)

    labelled = [(f"q{i}:", " 1", True) for i in range(4)] + [("q4:", " 9", False), ("q5:", " 8", False)]
    kwargs = dict(reward_config=REWARD, meta_judge_config=META, tokenizer_encode=TOKENIZER.encode,
                  rationale=lambda p, a: "ok ", wrong_judgement=wrong_reasoning, eos_id=TOKENIZER.eos_id)

    def reasoned(examples):
        texts = [TOKENIZER.decode(ids[:prompt_len]) for ids, prompt_len in examples]
        return sorted(t.split("|")[0] + ("|pass" if "bad Score: 5" in t else "|fail") for t in texts if "bad" in t)

    assert len(meta_judge_examples(labelled, **kwargs)) == 2 * (6 + 5)
    balanced = meta_judge_examples(labelled, balance_wrong_judgements=True, seed=3, **kwargs)
    assert len(balanced) == 2 * (6 + 2)
    fails = [t for t in reasoned(balanced) if t.endswith("fail")]
    assert reasoned(balanced).count("Mq4: 9|pass") == 2 and len(fails) == 2 and len(set(fails)) == 1  # both orders
    # which right answer keeps its wrong fail is seeded
    assert meta_judge_examples(labelled, balance_wrong_judgements=True, seed=3, **kwargs)[0][0].tolist() == balanced[0][0].tolist()
    # one kind missing: balancing would silently drop every reasoned example
    with pytest.raises(ValueError, match="0 pass a wrong answer and 4 fail a right one"):
        meta_judge_examples(labelled[:4], balance_wrong_judgements=True, **kwargs)


def test_meta_reward_stage_on_two_processes(tmp_path):
    """Under 25 s idle (measured: 22 s at load 12 on the shared 2 cores)."""
    from test_multiprocess import launch

    run = launch(tmp_path, Path(__file__).parents[1] / "scripts" / "multiprocess_meta_reward.py")
    assert run.returncode == 0, run.stderr[-3000:]
    rank_0, rank_1 = (torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank_0[k], rank_1[k]) for k in rank_0)  # one synchronised DPO run
    pairs = DPODataset(tmp_path / "checkpoints" / "stage-00-meta-reward-dpo.pairs")
    records = pairs.records()
    progress = pairs.meta["progress"]
    # both ranks' prompts reached the writer, once each: 9 prompts, every count from both ranks
    assert progress["prompts_consumed"] == 9 and progress["stats"]["prompts_tried"] == 9
    assert progress["judge_stats"]["answers_meta_judged"] + progress["judge_stats"]["prompts_agreeing"] == 9
    for kind in ("actor", "judge"):
        indices = [r["prompt_index"] for r in records if r["kind"] == kind]
        assert indices and len(indices) == len(set(indices))
