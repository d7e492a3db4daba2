"""The fingerprint of a user callable sees what it reads (globals, callees in other modules) and what it returns on
probes; a re-spelled local is the same plan; the salt; the library's own callables keep their identity."""

import importlib
import json
import math
import random
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch import ExternalRewardDPOConfig, SelfConsistencyDPOConfig, SFTConfig
from self_rewarding_lm_pytorch.pairs.selection import is_finite_reward
from self_rewarding_lm_pytorch.stages.external_reward import external_reward_probes
from self_rewarding_lm_pytorch.stages.kind import PlanInputs
from self_rewarding_lm_pytorch.stages.preference import pairs_fingerprint
from self_rewarding_lm_pytorch.stages.self_consistency import self_consistency_probes
from self_rewarding_lm_pytorch.storage.code_digest import is_user_module
from self_rewarding_lm_pytorch.storage.fingerprint import callable_identity, changed_parts, config_fingerprint, describe
from self_rewarding_lm_pytorch.storage.probes import VARIES, Probe, probe_parts, probe_records
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer

TOKENIZER = CharTokenizer()


def user_module(tmp_path, name, source):
    """Import `source` as module `name` from a file in tmp_path, fresh (as a new process would)."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    sys.path.insert(0, str(tmp_path))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(tmp_path))


@pytest.fixture(autouse=True)
def fresh_modules(monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a module rewritten within a second is read again
    yield
    for name in [name for name in sys.modules if name.startswith("fp_")]:
        del sys.modules[name]


SCORING = """
    def graded_score(prompt, response):
        return float(sum(c.isdigit() for c in response)) {edit}
"""
REWARDS = """
    import fp_scoring
    from fp_scoring import graded_score

    SIGN = {sign}
    reward = lambda p, r: SIGN * graded_score(p, r)

    def by_attribute(prompt, response):
        return SIGN * fp_scoring.graded_score(prompt, response)
"""


def rewards(tmp_path, sign=1, edit=""):
    user_module(tmp_path, "fp_scoring", SCORING.format(edit=edit))
    return user_module(tmp_path, "fp_rewards", REWARDS.format(sign=sign))


def test_the_globals_a_reward_reads_and_the_callees_in_other_modules_are_in_its_identity(tmp_path):
    first = rewards(tmp_path)
    same = rewards(tmp_path)
    assert callable_identity(first.reward) == callable_identity(same.reward)  # stable across imports
    assert callable_identity(first.by_attribute) == callable_identity(same.by_attribute)
    flipped = rewards(tmp_path, sign=-1)
    assert callable_identity(flipped.reward) != callable_identity(first.reward)
    edited = rewards(tmp_path, edit="* 2")  # the callee edited in its own module; the reward's own code unchanged
    assert callable_identity(edited.reward) != callable_identity(first.reward)
    assert callable_identity(edited.by_attribute) != callable_identity(first.by_attribute)  # scoring.graded_score


def test_a_renamed_local_is_the_same_identity_a_renamed_or_changed_function_is_not(tmp_path):
    source = """
        def reward(prompt, response):
            {name} = sum(c.isdigit() for c in response)
            return float({name}) {edit}
    """
    identity = lambda name, edit="", module="fp_respelled": callable_identity(
        user_module(tmp_path, module, source.format(name=name, edit=edit)).reward)
    assert identity("digits") == identity("n_digits")  # local names and line numbers are not hashed: accepted
    assert identity("digits") != identity("digits", edit="+ 1")
    assert identity("digits").split(":")[0] == "fp_respelled.reward"  # the name a refusal shows
    assert identity("digits", module="fp_other_name") != identity("digits")  # another qualified name: another plan


def test_recursive_and_mutually_recursive_code_is_hashed_once(tmp_path):
    module = user_module(tmp_path, "fp_recursive", """
        def even(n):
            return n == 0 or odd(n - 1)

        def odd(n):
            return n != 0 and even(n - 1)

        def make():
            def down(n):
                return 0 if n == 0 else down(n - 1)
            return down
    """)
    assert callable_identity(module.even) == callable_identity(module.even)
    assert callable_identity(module.make()) == callable_identity(module.make())  # a closure holding itself


def test_user_code_is_what_lives_outside_the_library_the_standard_library_and_installed_packages(tmp_path):
    user_module(tmp_path, "fp_mine", "X = 1\n")
    assert is_user_module("fp_mine") and is_user_module("__main__") and is_user_module(None)
    assert not any(is_user_module(name) for name in ("json", "torch", "numpy", "self_rewarding_lm_pytorch.pairs"))
    # the library's own callables keep the identity of their code alone (so plans without user code resume)
    assert callable_identity(is_finite_reward).startswith("self_rewarding_lm_pytorch.pairs.selection.is_finite_reward:")


def test_what_the_identity_follows_and_what_it_does_not(tmp_path):
    source = """
        import functools, random

        TABLE = (("a", {answer}), ("b", 2))
        CALLS = {{"count": {calls}}}
        GENERATOR = random.Random({seed})

        @functools.lru_cache
        def cached(text):
            CALLS["count"] += 1
            return dict(TABLE).get(text, 0) * {scale}

        class Grader:
            bonus = {bonus}
            def __call__(self, prompt, response):
                return self.helper(response) + self.offset

            def helper(self, response):
                return cached(response) + GENERATOR.random() * 0

        def reward(prompt, response):
            return cached(response)
    """
    values = {"answer": 1, "seed": 0, "scale": 1, "bonus": 0, "calls": 0}

    def ids(**changes):
        module = user_module(tmp_path, "fp_graders", source.format(**{**values, **changes}))
        grader = module.Grader()
        grader.offset = changes.get("offset", 0.0)
        return callable_identity(module.reward), callable_identity(grader)

    base = ids()
    assert ids(answer=2) != base  # a tuple of plain values
    assert ids(scale=2) != base  # the code under functools.lru_cache
    assert ids(bonus=1)[1] != base[1] and ids(offset=1.0)[1] != base[1]  # a class attribute, an instance attribute
    assert ids(seed=1) == base  # a global of a library type (a random.Random): by its type only
    assert ids(calls=5) == base  # a dict (mutable: a counter, a cache): by its type only


def probe(fn, inputs, digits=None):
    return probe_records(Probe("reward_fn", fn, tuple(inputs), digits))


def test_probe_records_are_the_texts_of_inputs_and_outputs():
    assert probe(lambda p, r: len(r) / 2, [("a", "bbb"), ("a", "")]) == [["'a', 'bbb'", "1.5"], ["'a', ''", "0.0"]]
    assert probe(lambda p, r: -0.0, [("a", "")]) == [["'a', ''", "0.0"]]  # -0.0 scores as 0.0
    assert probe(lambda p, r: 1 / len(r), [("a", "")]) == [["'a', ''", "raised ZeroDivisionError"]]
    assert probe(lambda p, r: np.float64(0.25), [("a", "b")])[0][1] == "0.25"
    assert probe(lambda x: torch.tensor([[1, -1]]), [(torch.tensor([2.0]),)]) == [["tensor[2.0]", "tensor[[1, -1]]"]]
    assert probe(lambda p, r: 0.123456, [("a", "b")], digits=3)[0][1] == "0.123"
    assert probe(lambda p, r: object(), [("a", "b")])[0][1] == "object"  # no memory address


def test_probes_seed_each_call_and_leave_the_generators_as_they_were():
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    draws = lambda p, r: random.random() + np.random.rand() + torch.rand(()).item()
    first = probe_parts([Probe("reward_fn", draws, (("a", "b"),))])
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert first == probe_parts([Probe("reward_fn", draws, (("a", "b"),))])  # the same draws on every run
    own = random.Random()  # its own generator, not seeded by the probe: two calls differ
    assert probe(lambda p, r: own.random(), [("a", "b")]) == [["'a', 'b'", VARIES]]


def test_a_changed_probe_names_the_callable_one_input_and_both_outputs():
    old = {"reward_fn": "x", "reward_fn probes": json.dumps([["'p', ''", "0.0"], ["'p', '42'", "2.0"]])}
    new = {"reward_fn": "y", "reward_fn probes": json.dumps([["'p', ''", "0.0"], ["'p', '42'", "-2.0"]])}
    assert changed_parts(old, new) == ["reward_fn", "reward_fn probes: reward_fn('p', '42') returned 2.0 before, -2.0 now"]
    other_inputs = {**new, "reward_fn probes": json.dumps([["'q', ''", "0.0"]])}
    assert changed_parts(old, other_inputs)[1] == "reward_fn probes (other probe inputs: the stage's prompts changed)"
    assert changed_parts({"reward_fn": "x"}, new)[1] == "reward_fn probes (probed now only)"


PROMPTS = ["sort 3 1:", "sort 9 2 7:", "sort 5:"]


def config(**overrides):
    settings = {"prompt_dataset": PROMPTS, "reward_fn": count_digits, "num_preference_pairs": 2, "num_train_steps": 1,
                "learning_rate": 1e-5, "end_learning_rate": 1e-6}
    return ExternalRewardDPOConfig(**{**settings, **overrides})


def count_digits(prompt, response):
    return float(sum(c.isdigit() for c in response))


INPUTS = PlanInputs(model=None, encode=TOKENIZER.encode, judge_encode=TOKENIZER.encode, reward_config=None, pad_id=-1)


def test_a_stage_probes_its_user_callables_on_its_own_first_and_middle_prompts():
    probes = {p.name: p for p in external_reward_probes(config(verifier=count_digits), INPUTS)}
    assert set(probes) == {"reward_fn", "verifier"}  # the library's defaults (is_valid_reward, ...) are not probed
    assert [args[0] for args in probes["reward_fn"].inputs] == ["sort 3 1:"] * 5 + ["sort 9 2 7:"] * 5
    assert [args[1] for args in probes["reward_fn"].inputs[:5]] == ["", "42", " 1 2 3", "The answer is 42.", "sort 3 1:"]
    records = probe_records(probes["reward_fn"])
    assert [r[1] for r in records[:5]] == ["0.0", "2.0", "3.0", "2.0", "2.0"]
    assert external_reward_probes(config(check_reward_fn_on_sample=False), INPUTS) == []  # must not be called early
    keys = self_consistency_probes(SelfConsistencyDPOConfig(
        prompt_dataset=PROMPTS, answer_key=str.split, num_preference_pairs=2, num_train_steps=1, learning_rate=1e-5,
        end_learning_rate=1e-6), INPUTS)
    assert keys == []  # str.split is the standard library's: its behaviour is Python's
    sc = SelfConsistencyDPOConfig(prompt_dataset=PROMPTS, answer_key=lambda r: r.strip()[-1:], num_preference_pairs=2,
                                  num_train_steps=1, learning_rate=1e-5, end_learning_rate=1e-6)
    assert probe_records(self_consistency_probes(sc, INPUTS)[0])[2] == ["' 1 2 3'", "'3'"]


class ScaledReward(nn.Module):
    scale = 1.0

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(TOKENIZER.num_tokens, 1)

    def forward(self, ids, mask=None):
        return self.embed(ids)[..., 0].mean(dim=-1) * self.scale


def test_a_reward_model_of_the_users_class_is_probed_and_its_code_described():
    model = ScaledReward()
    before = probe_parts(external_reward_probes(config(reward_fn=None, reward_model=model), INPUTS))
    described = describe(model)
    records = json.loads(before["reward_model probes"])
    assert len(records) == 4 and all(r[1] == format(float(r[1]), ".3g") for r in records)  # 3 significant digits
    ScaledReward.scale = -1.0  # same weights, other behaviour
    try:
        after = probe_parts(external_reward_probes(config(reward_fn=None, reward_model=model), INPUTS))
        assert after != before and describe(model) != described
    finally:
        ScaledReward.scale = 1.0
    assert probe_parts(external_reward_probes(config(reward_fn=None, reward_model=model), INPUTS)) == before


def test_fingerprint_salt_is_a_string_part_of_the_fingerprint_and_of_the_pairs_fingerprint():
    with pytest.raises(TypeError, match=r"SFTConfig.fingerprint_salt must be a str .* got a int: 2"):
        SFTConfig(train_dataset=[1], learning_rate=1e-5, end_learning_rate=1e-6, fingerprint_salt=2)
    assert "fingerprint_salt" not in config_fingerprint(config())  # no salt: fingerprints of configs without one
    salted = config(fingerprint_salt="reward-v2")
    parts = config_fingerprint(salted)
    assert parts["fingerprint_salt"] != config_fingerprint(config(fingerprint_salt="reward-v3"))["fingerprint_salt"]
    assert "fingerprint_salt" in pairs_fingerprint(salted, SimpleNamespace(fingerprint=parts))
    assert "learning_rate" not in pairs_fingerprint(salted, SimpleNamespace(fingerprint=parts))


def test_nan_ratings_probe_a_user_validity_check():
    check = lambda reward: not math.isnan(reward) and reward >= 0
    probes = {p.name: p for p in external_reward_probes(config(is_valid_reward=check), INPUTS)}
    assert [r[1] for r in probe_records(probes["is_valid_reward"])] == ["True", "True", "False", "True", "True",
                                                                         "False", "True"]
    assert set(probes) == {"reward_fn", "is_valid_reward"}


class FirstJudgementAbove:
    """A user pair filter: keeps a pair whose chosen first judgement is above `threshold`."""

    name = "first_above"

    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, chosen, rejected):
        return bool(chosen[0] > self.threshold)


def test_self_judged_stages_probe_a_users_score_parser_verdict_parser_and_pair_filter():
    from self_rewarding_lm_pytorch import MetaRewardDPOConfig, RewardConfig
    from self_rewarding_lm_pytorch.judging.meta_judge import MetaJudgeConfig
    from self_rewarding_lm_pytorch.stages.meta_reward import meta_reward_probes

    parse = lambda text: float(text.split(":")[1].split("/")[0]) if ":" in text else None
    stage = MetaRewardDPOConfig(prompt_dataset=PROMPTS, num_preference_pairs=2, num_train_steps=1, learning_rate=1e-5,
                                end_learning_rate=1e-6, reward_config=RewardConfig(parse_reward=parse),
                                meta_judge_config=MetaJudgeConfig(parse_verdict=lambda text: 0 if "A" in text else None),
                                pair_filters=(FirstJudgementAbove(4.5),))
    probes = {p.name: probe_records(p) for p in meta_reward_probes(stage, INPUTS)}
    assert set(probes) == {"pair_filters[0]", "reward_config.parse_reward", "meta_judge_config.parse_verdict"}
    assert [r[1] for r in probes["reward_config.parse_reward"]] == ["4.0", "4.5", "10.0", "None", "None"]
    assert [r[1] for r in probes["meta_judge_config.parse_verdict"]] == ["0", "None", "0", "None", "None"]
    assert probes["pair_filters[0]"][0] == ["tensor[5.0, 4.0, 5.0], tensor[1.0, 2.0, 1.0]", "True"]
    assert [r[1] for r in probes["pair_filters[0]"][1:]] == ["False", "True"]
