"""Every stage config and every training config refuses a numeric or boolean field of the wrong type when it is
built, naming the config, the field, the value, its type and the fix, before any check compares the field."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import MISSING, dataclass, fields, is_dataclass

import numpy as np
import pytest

import self_rewarding_lm_pytorch.training as training_package
from self_rewarding_lm_pytorch import DPOConfig, ExternalRewardDPOConfig, SFTConfig
from self_rewarding_lm_pytorch.data.config_types import check_field_types, typed_fields
from self_rewarding_lm_pytorch.generation.vllm_backend import VLLMConfig
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.stages.registry import STAGE_KINDS
from self_rewarding_lm_pytorch.tasks.sort_digits import SortDigitsTask

SFT_DATA = SortDigitsTask(seed=1).instruction_examples(4)
PROMPTS = SortDigitsTask(seed=0).prompts(4)


def checker(prompt: str, response: str) -> float:
    return float(len(response))


def training_configs() -> set[type]:
    """The configs of training/ (users build them for the standalone trainers): its dataclasses named *Config."""
    found = set()
    for module in pkgutil.iter_modules(training_package.__path__):
        loaded = importlib.import_module(f"{training_package.__name__}.{module.name}")
        found |= {cls for name, cls in inspect.getmembers(loaded, inspect.isclass)
                  if is_dataclass(cls) and name.endswith("Config") and cls.__module__ == loaded.__name__}
    return found


CONFIGS = sorted({kind.config for kind in STAGE_KINDS} | training_configs() | {PairGenerationConfig, VLLMConfig},
                 key=lambda cls: cls.__name__)

# a valid value of each field some config requires; a new required field must be added here
REQUIRED = {"train_dataset": SFT_DATA, "train_sft_dataset": SFT_DATA, "prompt_dataset": PROMPTS, "max_seq_len": 24,
            "num_preference_pairs": 2}


def build(cls: type, **overrides):
    """`cls` with valid values of its required fields, a length and, for a reward stage, a reward_fn."""
    names = {f.name for f in fields(cls)}
    kwargs = {f.name: REQUIRED[f.name] for f in fields(cls)
              if f.default is MISSING and f.default_factory is MISSING}
    if "num_train_steps" in names:
        kwargs["num_train_steps"] = 1
    if cls is ExternalRewardDPOConfig:
        kwargs["reward_fn"] = checker
    return cls(**{**kwargs, **overrides})


def test_the_configs_are_every_stage_kind_and_every_training_config():
    names = {cls.__name__ for cls in CONFIGS}
    assert {"SFTConfig", "SelfPlayConfig", "DPOConfig", "SelfRewardDPOConfig", "MetaRewardDPOConfig",
            "ExternalRewardDPOConfig", "SelfConsistencyDPOConfig", "PairGenerationConfig"} <= names
    for cls in CONFIGS:
        build(cls)  # the valid values build every config


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda cls: cls.__name__)
def test_every_field_with_a_number_or_bool_default_is_type_checked(cls):
    """A field whose annotation does not resolve to int, float or bool would silently go unchecked."""
    checked = {name for name, _, _ in typed_fields(cls)}
    numeric = {f.name for f in fields(cls) if isinstance(f.default, (int, float)) and f.default is not MISSING}
    assert numeric <= checked, f"{cls.__name__}: unchecked {sorted(numeric - checked)}"
    assert {"max_seq_len", "num_preference_pairs", "learning_rate"} & {f.name for f in fields(cls)} <= checked


@pytest.mark.parametrize("cls", [cls for cls in CONFIGS if "learning_rate" in {f.name for f in fields(cls)}],
                         ids=lambda cls: cls.__name__)
def test_a_string_learning_rate_is_refused_naming_the_config_the_field_the_value_and_the_fix(cls):
    with pytest.raises(TypeError) as error:
        build(cls, learning_rate="1e-5")
    assert str(error.value) == f"{cls.__name__}.learning_rate must be a number, got '1e-5' (str): pass 1e-5, not the string"


@pytest.mark.parametrize("cls, name, kind", [(cls, name, kind) for cls in CONFIGS for name, kind, _ in typed_fields(cls)],
                         ids=lambda value: getattr(value, "__name__", str(value)))
def test_every_typed_field_given_as_text_is_refused_before_any_check_compares_it(cls, name, kind):
    text, fix = ("true", "pass True, not the string") if kind is bool else ("7", "pass 7, not the string")
    with pytest.raises(TypeError) as error:
        build(cls, **{name: text})
    expected = {int: "an int", float: "a number", bool: "True or False"}[kind]
    assert str(error.value).startswith(f"{cls.__name__}.{name} must be {expected}")
    assert str(error.value).endswith(f"got '{text}' (str): {fix}")


def test_what_each_kind_of_field_accepts():
    data = {"train_dataset": SFT_DATA}
    # int fields: ints (numpy's too); not bools, floats or text
    assert SFTConfig(**data, batch_size=np.int64(4)).batch_size == 4
    for value, message in [(True, "SFTConfig.batch_size must be an int, got True (bool): pass an int"),
                           (4.0, "SFTConfig.batch_size must be an int, got 4.0 (float): pass 4"),
                           (1e4, "SFTConfig.batch_size must be an int, got 10000.0 (float): pass 10000"),
                           ("4.5", "SFTConfig.batch_size must be an int, got '4.5' (str): pass an int")]:
        with pytest.raises(TypeError) as error:
            SFTConfig(**data, batch_size=value)
        assert str(error.value) == message
    # float fields: ints and floats (numpy's too); not bools or text
    assert DPOConfig(num_train_steps=1, beta=1).beta == 1
    assert DPOConfig(num_train_steps=1, beta=np.float32(0.5)).beta == 0.5
    with pytest.raises(TypeError, match=r"^DPOConfig.beta must be a number, got False \(bool\): pass a number$"):
        DPOConfig(num_train_steps=1, beta=False)
    with pytest.raises(TypeError, match=r"^DPOConfig.beta must be a number, got 'abc' \(str\): pass a number$"):
        DPOConfig(num_train_steps=1, beta="abc")
    # optional fields: None too, and the fix says so
    assert SFTConfig(**data, max_grad_norm=None, num_train_steps=None).max_grad_norm is None
    with pytest.raises(TypeError, match=r"^SFTConfig.max_grad_norm must be a number or None, got \[1\.0\] \(list\): "
                                        r"pass a number or None$"):
        SFTConfig(**data, max_grad_norm=[1.0])
    # bool fields: True or False, never a truthy string or an int
    with pytest.raises(TypeError, match=r"^SFTConfig.skip_nonfinite_steps must be True or False, got 'False' \(str\): "
                                        r"pass False, not the string$"):
        SFTConfig(**data, skip_nonfinite_steps="False")
    with pytest.raises(TypeError, match=r"^SFTConfig.skip_nonfinite_steps must be True or False, got 1 \(int\)"):
        SFTConfig(**data, skip_nonfinite_steps=1)
    assert SFTConfig(**data, skip_nonfinite_steps=np.bool_(True)).skip_nonfinite_steps
    with pytest.raises(TypeError, match=r"^DPOConfig.precompute_reference must be True or False or None, got 'auto' "
                                        r"\(str\): pass True or False or None$"):
        DPOConfig(num_train_steps=1, precompute_reference="auto")


def test_a_subclass_with_an_annotation_that_does_not_resolve_keeps_its_bases_checks():
    @dataclass
    class Mine(SFTConfig):
        note: NotDefinedAnywhere | None = None  # noqa: F821

    assert typed_fields(Mine) == typed_fields(SFTConfig)
    with pytest.raises(TypeError, match=r"^Mine.learning_rate must be a number, got '1e-5' \(str\)"):
        Mine(SFT_DATA, learning_rate="1e-5")


def test_the_name_may_be_given():
    config = DPOConfig(num_train_steps=1)
    config.beta = "0.1"
    with pytest.raises(TypeError, match=r"^finetune_configs\[2\].beta must be a number, got '0.1' \(str\): pass 0.1"):
        check_field_types(config, "finetune_configs[2]")


def test_a_field_set_after_the_config_was_built_is_checked_when_the_trainer_is_built():
    from conftest import tiny_transformer

    from self_rewarding_lm_pytorch import SelfRewardingTrainer
    from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer

    tokenizer = CharTokenizer()
    dpo = build(ExternalRewardDPOConfig)
    dpo.learning_rate = "1e-5"  # e.g. an argparse value without type=float
    with pytest.raises(TypeError, match=r"^finetune_configs\[1\] \(ExternalRewardDPOConfig\)\.learning_rate must be a "
                                        r"number, got '1e-5' \(str\): pass 1e-5, not the string$"):
        SelfRewardingTrainer(tiny_transformer(num_tokens=tokenizer.num_tokens, max_seq_len=48),
                             finetune_configs=[build(SFTConfig), dpo], tokenizer_encode=tokenizer.encode,
                             tokenizer_decode=tokenizer.decode, eos_id=tokenizer.eos_id, checkpoints_folder="unused",
                             accelerate_kwargs={"cpu": True})
