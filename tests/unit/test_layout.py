"""The package's layout holds: each layer imports only the layers below it, no import cycle, no module over 400 lines,
a small top level whose names each come from one home, and no lab history in the code.

Run as a script, it prints the figures of docs/layout.md for any checkout of the package:

    python tests/unit/test_layout.py [REPO] [--trace]

`--trace` also runs one tiny self-reward stage and follows it from `SelfRewardingTrainer(...)()` to its DPO loop:
the package files it enters, and the calls that climb back from a module to one of a higher import depth.
"""

import ast
import re
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = "self_rewarding_lm_pytorch"
ROOT = Path(__file__).resolve().parents[2]
# bottom to top: a module may import its own layer and the layers listed before it
LAYERS = ("models", "storage", "data", "generation", "training", "judging", "pairs", "stages", "trainer", "__init__",
          "experiment")
SIBLINGS = {"training": "judging", "judging": "training"}  # same floor: neither imports the other
INDEPENDENT = ("tasks",)  # bundled toy tasks: import nothing of the package
MAX_LINES = 400
MAX_TOP_LEVEL_NAMES = 25
HISTORY = re.compile(r"dev round|round \d+ |issue \d+|test run|we tried|\(dev\)|on dev\b", re.IGNORECASE)


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(root: Path) -> set[tuple[str, str]]:
    """(importer, imported) pairs between the package's modules."""
    mods, edges = modules(root), set()
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in mods else node.module
                    if target in mods and target != name:
                        edges.add((name, target))
            elif isinstance(node, ast.Import):
                edges.update((name, a.name) for a in node.names if a.name in mods and a.name != name)
    return edges


def layer(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, []):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in list(graph):
        if node not in state:
            visit(node, [node])
    return found


def import_depths(edges: set[tuple[str, str]]) -> dict[str, int]:
    """Each module's import depth: 1 for a module importing nothing of the package, else 1 + its deepest import."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())

    @lru_cache(None)
    def depth(node):
        return 1 + max((depth(n) for n in graph[node]), default=0)

    return {node: depth(node) for node in graph}


def top_level_names(root: Path) -> list[str]:
    tree = ast.parse((root / PACKAGE / "__init__.py").read_text())
    return next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__")


def test_every_import_runs_down_the_layers():
    upward = []
    for importer, imported in imports(ROOT):
        a, b = layer(importer), layer(imported)
        if a == b:
            continue
        if a in INDEPENDENT:
            upward.append((importer, imported))
        elif b in INDEPENDENT:
            continue
        elif SIBLINGS.get(a) == b or LAYERS.index(b) > LAYERS.index(a):
            upward.append((importer, imported))
    assert not upward, f"imports that run up a layer (or across siblings): {sorted(upward)}"


def test_no_import_cycle():
    assert cycles(imports(ROOT)) == []


def test_no_module_is_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules(ROOT).items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_top_level_is_small_and_each_name_has_one_home():
    import self_rewarding_lm_pytorch as package

    names = top_level_names(ROOT)
    assert len(names) <= MAX_TOP_LEVEL_NAMES
    for name in names:  # defined in a subpackage module, not handed on by one
        home = sys.modules[getattr(package, name).__module__]
        assert home.__name__.count(".") >= 1 and name in vars(home)


def test_subpackages_hand_no_names_on():
    for name, path in modules(ROOT).items():
        if path.name == "__init__.py" and name != PACKAGE:
            assert ast.parse(path.read_text()).body[1:] == [], f"{path} holds more than its docstring"


def test_no_lab_history_in_the_code():
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in modules(ROOT).values()
             for number, line in enumerate(path.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert found == []


def trace_one_stage(root: Path) -> dict:
    """Follow one tiny self-reward stage from `SelfRewardingTrainer(...)()` to the start of its DPO loop."""
    import os
    import random
    import tempfile

    import torch
    from x_transformers import Decoder, TransformerWrapper

    sys.path.insert(0, str(root))
    import self_rewarding_lm_pytorch as srl
    from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

    package_dir = str(root / PACKAGE) + os.sep
    depths = import_depths(imports(root))
    by_file = {str(path): name for name, path in modules(root).items()}
    torch.manual_seed(0)
    random.seed(0)
    tokenizer, task = CharTokenizer(), SortDigitsTask(length=3, seed=0)
    model = TransformerWrapper(num_tokens=tokenizer.num_tokens, max_seq_len=48,
                               attn_layers=Decoder(dim=32, depth=1, heads=2))

    def decode(ids):  # every judgement ends in a readable score, so the untrained model makes pairs
        return tokenizer.decode(ids) + f" Score: {random.randint(0, 5)}"

    stage = srl.SelfRewardDPOConfig(prompt_dataset=task.prompts(8), num_preference_pairs=1, accept_fewer_pairs=True,
                                    num_train_steps=1, batch_size=2, response_max_new_tokens=6, judge_max_new_tokens=4,
                                    prompt_batch_size=8, num_judgements=1)
    trainer = srl.SelfRewardingTrainer(
        model, finetune_configs=[stage], tokenizer_encode=tokenizer.encode, tokenizer_decode=decode,
        self_reward_prompt_config=srl.RewardConfig(prompt_template="judge {{ prompt }}{{ response }}|"),
        eos_id=tokenizer.eos_id, checkpoints_folder=tempfile.mkdtemp(), accelerate_kwargs=dict(cpu=True),
    )
    entered, climbs, done = [], [], []

    def follow(frame, event, arg):
        if done or event != "call" or not frame.f_code.co_filename.startswith(package_dir):
            return
        callee = by_file.get(frame.f_code.co_filename)
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(package_dir):
            caller = caller.f_back
        caller = by_file.get(caller.f_code.co_filename) if caller is not None else None
        if callee not in entered:
            entered.append(callee)
        if caller and callee != caller and depths.get(callee, 0) > depths.get(caller, 0):
            climbs.append(f"{caller} -> {callee}.{frame.f_code.co_name}")
        if frame.f_code.co_name == "train" and type(frame.f_locals.get("self")).__name__ == "DPOTrainer":
            done.append(True)

    sys.setprofile(follow)
    try:
        trainer()
    finally:
        sys.setprofile(None)
    route = [m.removeprefix(f"{PACKAGE}.") for m in entered if layer(m) not in INDEPENDENT]
    return dict(files=len(route), climbs=sorted(set(climbs)), route=" -> ".join(route))


def report(root: Path, trace: bool) -> dict:
    edges = imports(root)
    sizes = {path: len(path.read_text().splitlines()) for path in modules(root).values()}
    largest = max(sizes, key=sizes.get)
    code = [path for path in sizes if path.name != "__init__.py"]
    figures = dict(
        modules=len(code), folders=len({path.parent for path in code}), imports=len(edges), cycles=len(cycles(edges)),
        import_depth=max(import_depths(edges).values()), largest=f"{largest.relative_to(root)} ({sizes[largest]} lines)",
        top_level_names=len(top_level_names(root)), package_lines=sum(sizes.values()),
    )
    if trace:
        figures.update(trace_one_stage(root))
    return figures


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    for name, value in report(Path(arguments[0]).resolve() if arguments else ROOT, "--trace" in sys.argv).items():
        print(f"{name}: {value}")
