"""Probes: what a user's callable returns on a few fixed inputs, kept in a stage's fingerprint (storage/fingerprint.py).

A code hash sees how a callable is spelled; a probe sees what it does. Each `Probe` names a config field
(`reward_fn`, `pair_filters[0]`, ...), the callable and its argument tuples (drawn by the stage kind from the
stage's own prompts: stages/preference.py). `probe_parts` calls the callable on each tuple twice and keeps, per
tuple, the text of the input and of the output, as JSON under the part `"<field> probes"`; the run folder stores
it with the fingerprint, so a rerun whose callable answers otherwise names the field and one input whose output
changed (`explain_probe_change`).

- Outputs are written deterministically: floats by `repr`, -0.0 as 0.0 (or rounded to `Probe.digits` significant digits, for
  a reward model whose last digits depend on the hardware), tensors by their values, objects whose `repr` holds a
  memory address by their type. Long texts are cut, with a hash of the whole.
- A call that raises is recorded as `raised <ExceptionType>`: a probe never stops the run.
- The random generators of `random`, numpy and torch are seeded before each call and restored afterwards, so a
  callable that draws from them answers the same on every run and the run's own draws are untouched. A callable
  whose two calls still differ (its own unseeded generator, the clock) is recorded as varying: not compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

PART_SUFFIX = " probes"
VARIES = "<varies from call to call>"
MAX_TEXT = 160
SEED = 0


@dataclass(frozen=True)
class Probe:
    """`fn(*args)` for each tuple of `inputs`, recorded under the fingerprint part `f"{name} probes"`."""

    name: str
    fn: Callable
    inputs: tuple[tuple, ...]
    digits: int | None = None  # floats rounded to this many significant digits; None: exact


def cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}...(sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]})"


def render(value, digits: int | None = None, depth: int = 0) -> str:
    """A text of `value` that is the same in every process for the same value."""
    if isinstance(value, (np.generic, np.ndarray)) or torch.is_tensor(value):
        value = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(value, list):
            return "tensor" + render(value, digits, depth)
    if isinstance(value, float):
        value += 0.0  # -0.0 scores as 0.0 does
        return repr(value) if digits is None else format(value, f".{digits}g")
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return repr(value)
    if depth > 4:
        return type(value).__qualname__
    if isinstance(value, (list, tuple)):
        inner = ", ".join(render(v, digits, depth + 1) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{render(k)}: {render(v, digits, depth + 1)}" for k, v in
                               sorted(value.items(), key=lambda kv: repr(kv[0]))) + "}"
    text = repr(value)
    return type(value).__qualname__ if " at 0x" in text else text


@contextlib.contextmanager
def seeded_generators():
    """Restore the states of `random`, numpy's and torch's generators (CPU, and CUDA once it is initialised)
    on leaving; `reseed()` inside gives every call the same draws."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def reseed():
    random.seed(SEED)
    np.random.seed(SEED)
    torch.default_generator.manual_seed(SEED)
    if torch.cuda.is_initialized():  # never queue a seed for a CUDA that is not in use
        torch.cuda.manual_seed_all(SEED)


def call_once(fn: Callable, args: tuple, digits: int | None) -> str:
    reseed()
    try:
        return cut(render(fn(*args), digits))
    except Exception as error:  # noqa: BLE001 - a probe records any failure; the stage reports it when it calls
        return f"raised {type(error).__name__}"


def probe_records(probe: Probe) -> list[list[str]]:
    """[input text, output text] for each input tuple of `probe`."""
    records = []
    for args in probe.inputs:
        first, second = call_once(probe.fn, args, probe.digits), call_once(probe.fn, args, probe.digits)
        records.append([cut(", ".join(render(a) for a in args)), first if first == second else VARIES])
    return records


def probe_parts(probes: list[Probe]) -> dict[str, str]:
    """The fingerprint parts of `probes`, one per probe: the JSON of its records."""
    with seeded_generators(), torch.no_grad():
        return {f"{probe.name}{PART_SUFFIX}": json.dumps(probe_records(probe)) for probe in probes}


def is_probe_part(name: str) -> bool:
    return name.endswith(PART_SUFFIX)


def _records(part: str | None) -> list | None:
    try:
        records = json.loads(part) if part is not None else None
    except ValueError:
        return None
    return records if isinstance(records, list) else None


def explain_probe_change(name: str, old: str | None, new: str | None) -> str:
    """`name` (a probe part) and what changed in it: one input whose output differs, before and now."""
    field = name[: -len(PART_SUFFIX)] if is_probe_part(name) else name
    old_records, new_records = _records(old), _records(new)
    if old_records is None or new_records is None:
        return f"{name} (probed {'now only' if old_records is None else 'before only'})"
    changed = [(before, now) for before, now in zip(old_records, new_records)
               if before[0] == now[0] and before[1] != now[1]]
    changed.sort(key=lambda pair: VARIES in pair[0] or VARIES in pair[1])  # a plain value first
    if changed:
        before, now = changed[0]
        return f"{name}: {field}({before[0]}) returned {before[1]} before, {now[1]} now"
    return f"{name} (other probe inputs: the stage's prompts changed)"
