"""Fingerprints: what identifies the result of a stage, so that a rerun reuses files only of the very same plan.

A fingerprint is a dict of named parts, each a short digest, so a mismatch can say what changed:
- plain settings (numbers, strings, tuples, dicts): their value;
- callables (`reward_fn`, `verifier`, `is_valid_reward`, `pick_paired_rewards`, `parse_reward`, an early
  stopper's `eval_fn`): module, qualified name and a hash of the code object (bytecode, constants, names,
  recursively), of the default arguments and of the closure's values, so flipping a sign in a lambda is a
  different plan (a Python upgrade that changes bytecode is too). For a callable of the user's code (storage/
  code_digest.py) the hash also takes the globals its code reads: their values when plain (numbers, strings,
  containers of them), and the code of the user's functions, classes and modules it reaches, transitively.
  Local variable names and line numbers are not part of the hash: re-spelling a local is the same plan.
  Builtins give their name only;
- modules (a reward model): the type and the checksum of the state dict, and for a class of the user's code the
  digest of that class's code;
- datasets: a content hash. Datasets of at most `FULL_HASH_LIMIT` items are hashed item by item; larger ones
  by their length and `SAMPLED_ITEMS` items spread evenly (first and last included), which bounds the cost but
  can miss an edit between sampled items. A dataset with a `fingerprint()` method (as `DPODataset` and the mock
  datasets have) or a HuggingFace `datasets.Dataset` (its `_fingerprint`) gives its own;
- the tokenizer: `encode(PROBE_TEXT)` and the decoding of that encoding;
- `fingerprint_salt`, a string the user bumps to mark a change the hashes cannot see (a part only when not empty).
What a user callable returns on a few fixed inputs (storage/probes.py) is added by the orchestrator; docs/
fingerprint.md lists what all of this detects and what it does not.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types

import numpy as np
import torch
from torch import nn

from self_rewarding_lm_pytorch.storage.code_digest import code_digest, deep_digest, is_user_code
from self_rewarding_lm_pytorch.storage.integrity import content_digest
from self_rewarding_lm_pytorch.storage.probes import explain_probe_change, is_probe_part

FULL_HASH_LIMIT = 10_000
SAMPLED_ITEMS = 2_000
PROBE_TEXT = "Probe: Score: 4.5/10 <response>x = [1, 2]; (ok)?</response>\n\tThe End"  # ASCII: every tokenizer takes it


def short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def callable_identity(fn) -> str:
    """Qualified name plus a hash of the code where Python gives it: the user's code with what it reads
    (storage/code_digest.py), a callable of this library or an installed package by its own code only."""
    if isinstance(fn, functools.partial):
        return f"partial({callable_identity(fn.func)}, {describe(fn.args)}, {describe(fn.keywords)})"
    if isinstance(fn, types.MethodType):
        return f"{callable_identity(fn.__func__)} of {describe(fn.__self__)}"
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    if is_user_code(fn):
        return f"{name}:{deep_digest(fn, describe)}"
    code = getattr(fn, "__code__", None)
    if code is None:
        if hasattr(fn, "fingerprint"):
            return f"{name}:{fn.fingerprint()}"
        call = getattr(type(fn), "__call__", None)
        if not isinstance(fn, type) and getattr(call, "__code__", None) is not None:  # an instance with __call__
            return f"{type(fn).__qualname__} instance:{callable_identity(call)}:{describe(getattr(fn, '__dict__', {}))}"
        return name
    hasher = hashlib.sha256()
    code_digest(code, hasher)
    hasher.update(describe(fn.__defaults__).encode())
    for cell in fn.__closure__ or ():
        try:
            hasher.update(describe(cell.cell_contents).encode())
        except ValueError:  # an empty cell
            pass
    return f"{name}:{hasher.hexdigest()[:16]}"


def describe(value, depth: int = 0) -> str:
    """A stable text for a setting (see the module docstring for what each kind contributes)."""
    if depth > 6:
        return type(value).__qualname__
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in sorted(value.items(), key=repr)) + "}"
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        return f"tensor:{content_digest(value)[:16]}"
    if isinstance(value, nn.Module):  # a module of a user class: the code of its class too
        code = f":{deep_digest(type(value), describe)}" if is_user_code(value) else ""
        return f"{type(value).__qualname__}:{content_digest(value.state_dict())[:16]}{code}"
    if hasattr(value, "fingerprint") and callable(value.fingerprint):
        return f"{type(value).__qualname__}:{value.fingerprint()}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = {f.name: describe(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
        return f"{type(value).__qualname__}({parts})"
    if callable(value):
        return callable_identity(value)
    return type(value).__qualname__


def _item_digest(item) -> str:
    try:
        return content_digest(item)
    except TypeError:
        return describe(item)


def dataset_digest(dataset) -> str:
    """A content hash of a dataset (see the module docstring for the rule that bounds its cost)."""
    if hasattr(dataset, "fingerprint") and callable(dataset.fingerprint):
        return f"own:{dataset.fingerprint()}"
    if isinstance(getattr(dataset, "_fingerprint", None), str):  # a HuggingFace datasets.Dataset
        return f"hf:{dataset._fingerprint}"
    n = len(dataset)
    indices = range(n) if n <= FULL_HASH_LIMIT else sorted(set(np.linspace(0, n - 1, SAMPLED_ITEMS).astype(int).tolist()))
    hasher = hashlib.sha256(f"{n} items".encode())
    for index in indices:
        hasher.update(_item_digest(dataset[index]).encode())
    return hasher.hexdigest()[:16]


def tokenizer_digest(encode, decode) -> str:
    """How the tokenizer encodes `PROBE_TEXT`, and decodes that encoding."""
    ids = torch.as_tensor(encode(PROBE_TEXT))
    try:
        text = decode(ids.long())
    except Exception as error:  # a decode that cannot take every id still gives a fingerprint of its encoding
        text = f"decode failed: {type(error).__name__}"
    return short(describe(ids) + repr(text))


def config_fingerprint(config, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """One part per field of a stage config: datasets (fields named `*dataset*`) by content, the rest described."""
    parts = {}
    for field in dataclasses.fields(config):
        if field.name in skip:
            continue
        value = getattr(config, field.name)
        if field.name == "fingerprint_salt" and value == "":  # no salt: the fingerprint of a config without one
            continue
        if "dataset" in field.name and value is not None:
            parts[field.name] = dataset_digest(value)
        else:
            parts[field.name] = short(describe(value))
    return parts


def changed_parts(old: dict | None, new: dict | None) -> list[str]:
    """The names of the parts that differ between two fingerprints (all of them if one is missing); a probe part
    (storage/probes.py) with one input whose output changed, before and now."""
    if old == new:
        return []
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ["everything (no fingerprint recorded)" if not isinstance(old, dict) else "everything"]
    changed = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
    return [explain_probe_change(name, old.get(name), new.get(name)) if is_probe_part(name) else name
            for name in changed]
