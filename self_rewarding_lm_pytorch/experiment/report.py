"""Tables and a plot from an experiment's rows: mean and 95% interval over seeds, per arm and iteration, and the
per-seed comparisons a claim of self-improvement rests on (gain over the seed model, win over the random control)."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

# two-sided 95% quantiles of Student's t, by degrees of freedom (a dependency-free table; beyond 30, 1.96)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}

METRICS = ("exact_match", "judge_bacc", "vote_bacc", "pairs", "pairs_better", "pairs_worse", "pairs_neither")


def mean_and_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over seeds (NaN values dropped; half-width NaN for one value)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], math.nan
    dof = len(values) - 1
    t = T_975.get(dof) or T_975[max(k for k in T_975 if k <= dof)] if dof <= 30 else 1.96
    return statistics.mean(values), t * statistics.stdev(values) / math.sqrt(len(values))


def _fmt(mean: float, half: float, percent: bool) -> str:
    if math.isnan(mean):
        return "-"
    scale, digits = (100, 1) if percent else (1, 1)
    text = f"{mean * scale:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half * scale:.{digits}f}"


def summary_table(rows: list[dict]) -> str:
    """Markdown: one line per arm and iteration, mean ± 95% interval over seeds (percentages except pairs)."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["arm"], row["iteration"])].append(row)
    header = "| arm | iteration | seeds | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + "---|" * (3 + len(METRICS))]
    order = sorted(groups, key=lambda key: (key[0] != "sft", key[0], key[1]))
    for arm, iteration in order:
        group = groups[(arm, iteration)]
        cells = [_fmt(*mean_and_interval([r.get(m, math.nan) for r in group]), percent=m != "pairs") for m in METRICS]
        lines.append(f"| {arm} | {iteration} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_checks(rows: list[dict], baseline_arm: str = "random") -> str:
    """Markdown: per arm, the exact-match gain from the seed model to the last iteration in each seed, and whether
    the arm beats `baseline_arm` at the last iteration, counted over the seeds where the baseline ran ("-" when it
    ran in none: a missing control is not a loss)."""
    by_key = {(r["seed"], r["arm"], r["iteration"]): r["exact_match"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    arms = sorted({r["arm"] for r in rows} - {"sft"})
    last = max((r["iteration"] for r in rows), default=0)
    lines = ["| arm | gain per seed (points) | mean gain | beats " + baseline_arm + " (seeds) |", "|---|---|---|---|"]
    for arm in arms:
        gains, wins, compared = [], 0, 0
        for seed in seeds:
            start, end = by_key.get((seed, "sft", 0)), by_key.get((seed, arm, last))
            if start is None or end is None:
                continue
            gains.append(100 * (end - start))
            base = by_key.get((seed, baseline_arm, last))
            if base is not None:
                compared += 1
                wins += end > base
        mean, half = mean_and_interval(gains)
        lines.append(f"| {arm} | {', '.join(f'{g:+.1f}' for g in gains)} | {_fmt(mean / 100, half / 100, True)} | "
                     f"{'-' if arm == baseline_arm or not compared else f'{wins}/{compared}'} |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path):
    first = ["seed", "arm", "iteration"]
    columns = first + sorted({k for row in rows for k in row} - set(first))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path, metric: str = "exact_match", title: str = ""):
    """Mean `metric` per iteration, one line per arm (iteration 0 is the shared seed model), 95% interval shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install matplotlib") from error
    start = [r[metric] for r in rows if r["arm"] == "sft"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in sorted({r["arm"] for r in rows} - {"sft"}):
        iterations = sorted({r["iteration"] for r in rows if r["arm"] == arm})
        stats = [mean_and_interval(start)] + [
            mean_and_interval([r[metric] for r in rows if r["arm"] == arm and r["iteration"] == i]) for i in iterations
        ]
        xs = [0, *iterations]
        means = [100 * m for m, _ in stats]
        halves = [0 if math.isnan(h) else 100 * h for _, h in stats]
        line, = ax.plot(xs, means, marker="o", label=arm)
        ax.fill_between(xs, [m - h for m, h in zip(means, halves)], [m + h for m, h in zip(means, halves)],
                        color=line.get_color(), alpha=0.12)
    ax.set_xlabel("iteration (0: seed model)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_xticks(sorted({0} | {r["iteration"] for r in rows}))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[dict], out_dir: Path, title: str = "") -> str:
    """results.csv, results.md (both tables) and results.png in `out_dir`; returns the markdown."""
    out_dir = Path(out_dir)
    write_csv(rows, out_dir / "results.csv")
    text = (f"# {title}\n\nMean ± 95% interval over seeds (t-distribution); percentages except `pairs`.\n\n"
            f"{summary_table(rows)}\n\nExact match, seed model -> last iteration, per seed:\n\n{per_seed_checks(rows)}\n")
    (out_dir / "results.md").write_text(text)
    plot(rows, out_dir / "results.png", title=title)
    return text
