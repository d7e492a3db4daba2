"""The hash of what a user's callable runs: its code and what that code reads, transitively (storage/fingerprint.py).

User code is code outside this library, the standard library and the installed packages (site-packages): the
script, a module next to it, a notebook's cells. For a callable of user code the digest takes
- its code object: bytecode, the names it uses and its constants, nested code included (not local variable names
  nor line numbers: renaming a local or moving the function is the same digest);
- its default arguments and its closure's values;
- every global its code reads (names of `co_names`, nested code included, found in the function's globals):
  plain values (None, bool, numbers, strings, bytes, and tuples and frozensets of them) by value, tensors and
  modules by content (storage/fingerprint.py `describe`), user functions and classes by this same digest, a user
  module by the attributes the code reads from it (`scoring.graded_score`), anything else by its type's name. Lists,
  dicts and sets count by their type only: they often hold what the run changes (a counter, a cache), which a rerun
  could never match;
- for a user class (or an instance of one: a callable object) the code of each of its methods and its plain class
  attributes, and for an instance its attributes.
Code of this library, the standard library and installed packages counts by its qualified name only: its behaviour
is its version's. A function reached twice (recursion, mutual calls) is hashed once.
"""

from __future__ import annotations

import functools
import hashlib
import os
import site
import sys
import sysconfig
import types

LIBRARY = "self_rewarding_lm_pytorch"
MAX_DEPTH = 40  # calls, containers and attributes followed from one callable, one inside the other
PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    roots.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else None)
    return tuple(sorted(os.path.realpath(root) + os.sep for root in roots if root))


_INSTALLED = _installed_roots()


@functools.cache
def is_user_module(name: str | None) -> bool:
    """Whether module `name` is the user's code (see the module docstring); the script run (`__main__`) and a module
    of unknown origin are."""
    if not name or name == "__main__":
        return True
    top = name.partition(".")[0]
    if top == LIBRARY or top in sys.stdlib_module_names or name == "builtins":
        return False
    file = getattr(sys.modules.get(name), "__file__", None)
    return file is None or not os.path.realpath(file).startswith(_INSTALLED)


def _module_of(obj) -> str | None:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    if isinstance(obj, (types.FunctionType, type)):
        return obj.__module__
    return type(obj).__module__


def is_user_code(obj) -> bool:
    """Whether `obj` (a function, a class, a module, or an instance: by its class) is the user's code."""
    for _ in range(MAX_DEPTH):  # a wrapper's module is its type's: what it wraps tells
        wrapped = _wrapped(obj)
        if wrapped is None:
            break
        obj = wrapped
    if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return False
    return is_user_module(_module_of(obj))


def _wrapped(obj):
    """What a wrapper object (functools.lru_cache, a decorator's object) calls; None for anything else."""
    if isinstance(obj, (type, types.FunctionType, types.ModuleType)):
        return None
    wrapped = getattr(obj, "__wrapped__", None) if callable(obj) else None
    return None if wrapped is obj else wrapped


def _holds_data(value) -> bool:
    """A tensor, an array or a module (not their classes): described by content."""
    return not isinstance(value, type) and (hasattr(value, "state_dict") or hasattr(value, "__array__"))


def code_digest(code: types.CodeType, hasher):
    """Bytecode, names and constants of `code`, nested code objects included."""
    hasher.update(code.co_code)
    hasher.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            code_digest(const, hasher)
        else:
            hasher.update(repr(const).encode())


def global_names(code: types.CodeType) -> list[str]:
    """The names `code` and its nested code objects look up (globals, and attribute names), first use first."""
    names = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(dict.fromkeys(global_names(const)))
    return list(names)


def deep_digest(obj, describe) -> str:
    """The digest of a user callable `obj` (see the module docstring); `describe` gives tensors, modules and other
    settings their text (storage/fingerprint.py)."""
    walker = _Walker(describe)
    walker.value(obj)
    return walker.hasher.hexdigest()[:16]


class _Walker:
    """One digest: a hasher, and the functions, classes and objects already in it."""

    def __init__(self, describe):
        self.hasher, self.describe, self.seen = hashlib.sha256(), describe, set()

    def put(self, text: str):
        self.hasher.update(text.encode() + b"\0")

    def first_visit(self, obj, label: str) -> bool:
        if id(obj) in self.seen:
            self.put(f"again {label}")
            return False
        self.seen.add(id(obj))
        return True

    def value(self, value, depth: int = 0, names: list[str] = ()):
        """Put `value` into the digest; `names`: the names the reading code uses, for a module's attributes."""
        if depth > MAX_DEPTH:
            self.put(f"deep {type(value).__qualname__}")
        elif isinstance(value, PLAIN):
            self.put(repr(value))
        elif isinstance(value, tuple):
            self.put(f"tuple[{len(value)}]")
            for item in value:
                self.value(item, depth + 1)
        elif isinstance(value, frozenset):
            self.put(f"frozenset[{len(value)}]")
            for item in sorted(value, key=repr):
                self.value(item, depth + 1)
        elif isinstance(value, (list, dict, set, bytearray)):
            # mutable: it often holds state the run changes (a counter, a cache), which no rerun could match
            self.put(f"mutable {type(value).__name__}")
        elif isinstance(value, functools.partial):
            self.put("partial")
            self.value((value.func, value.args, value.keywords), depth + 1)
        elif isinstance(value, types.MethodType):
            self.put("method")
            self.value((value.__func__, value.__self__), depth + 1)
        elif _wrapped(value) is not None:
            if self.first_visit(value, f"wrapper {type(value).__qualname__}"):
                self.put(f"wrapper {type(value).__qualname__}")
                self.value(_wrapped(value), depth + 1)
        elif not is_user_code(value) or _holds_data(value):
            # outside the user's code, or a tensor, array or module: by its name or content, as a setting
            self.put(self.outside(value))
        elif isinstance(value, types.ModuleType):
            self.module(value, depth, names)
        elif isinstance(value, types.FunctionType):
            self.function(value, depth)
        elif isinstance(value, type):
            self.cls(value, depth)
        else:
            self.instance(value, depth)

    def outside(self, value) -> str:
        if isinstance(value, types.ModuleType):
            return f"module {value.__name__}"
        if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
            return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
        return self.describe(value)

    def function(self, fn: types.FunctionType, depth: int):
        if not self.first_visit(fn, fn.__qualname__):
            return
        wrapped = getattr(fn, "__wrapped__", None)  # functools.wraps: the decorated function runs too
        self.put(f"function {fn.__module__}.{fn.__qualname__}")
        code_digest(fn.__code__, self.hasher)
        self.value((fn.__defaults__, fn.__kwdefaults__), depth + 1)
        for cell in fn.__closure__ or ():
            try:
                self.value(cell.cell_contents, depth + 1)
            except ValueError:  # an empty cell
                self.put("empty cell")
        names = global_names(fn.__code__)
        for name in names:
            if name in fn.__globals__:
                self.put(f"global {name}")
                self.value(fn.__globals__[name], depth + 1, names)
        if wrapped is not None:
            self.value(wrapped, depth + 1)

    def module(self, module: types.ModuleType, depth: int, names: list[str]):
        self.put(f"module {module.__name__}")
        for name in names:
            if name in vars(module):
                self.put(f"attribute {name}")
                self.value(vars(module)[name], depth + 1, names)

    def cls(self, cls: type, depth: int):
        if not self.first_visit(cls, cls.__qualname__):
            return
        self.put(f"class {cls.__module__}.{cls.__qualname__}")
        for base in cls.__mro__[1:]:
            if is_user_code(base):
                self.value(base, depth + 1)
        for name, attribute in sorted(vars(cls).items()):
            if isinstance(attribute, (staticmethod, classmethod)):
                attribute = attribute.__func__
            elif isinstance(attribute, property):
                attribute = (attribute.fget, attribute.fset)
            if isinstance(attribute, (types.FunctionType, tuple, *PLAIN)) and not name.startswith("__doc"):
                self.put(f"class attribute {name}")
                self.value(attribute, depth + 1)

    def instance(self, obj, depth: int):
        if not self.first_visit(obj, type(obj).__qualname__):
            return
        self.value(type(obj), depth + 1)
        for name, attribute in sorted(getattr(obj, "__dict__", {}).items()):
            self.put(f"attribute {name}")
            self.value(attribute, depth + 1)
