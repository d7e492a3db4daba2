"""Draws ../diagram.png, the pipeline figure of the README.

A documentation tool, not part of the library: it needs matplotlib (`pip install matplotlib`), which the
package does not depend on. Run from anywhere: `python scripts/draw_diagram.py`.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parent.parent / "diagram.png"

COLORS = dict(data="#e8f1fb", stage="#fde9d9", model="#e2f0d9", loop="#f7f7f7", side="#efe6f5")


def box(ax, x, y, w, h, text, kind, fontsize=10, weight="normal"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=COLORS[kind], edgecolor="#555555", linewidth=1.2))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, weight=weight, wrap=True)
    return (x, y, w, h)


def arrow(ax, start, end, text=None, rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, linewidth=1.3, color="#333333",
                                 connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.08, (start[1] + end[1]) / 2, text, fontsize=8.5, color="#333333",
                ha="left", va="center")


def main():
    fig, ax = plt.subplots(figsize=(9, 7.6), dpi=110)
    ax.set_xlim(0, 9)
    ax.set_ylim(0, 7.6)
    ax.axis("off")

    # seed data and SFT
    box(ax, 0.3, 6.55, 3.6, 0.8, "seed data\ninstruction examples (IFT)\n+ judge examples (EFT)", "data", 9)
    box(ax, 4.6, 6.65, 1.7, 0.6, "SFT stage", "stage", 10, "bold")
    box(ax, 7.0, 6.65, 1.6, 0.6, "model M_t", "model", 10, "bold")
    arrow(ax, (3.9, 6.95), (4.6, 6.95))
    arrow(ax, (6.3, 6.95), (7.0, 6.95))

    # the self-rewarding iteration
    ax.add_patch(FancyBboxPatch((0.2, 1.25), 6.2, 4.95, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=COLORS["loop"], edgecolor="#999999", linestyle="--", linewidth=1.2))
    ax.text(0.4, 5.95, "self-rewarding iteration (SelfRewardDPOConfig)", fontsize=10, weight="bold", va="center")

    box(ax, 0.5, 4.85, 2.2, 0.7, "new prompts", "data", 10)
    box(ax, 3.4, 4.7, 2.8, 1.0, "sampler\nbatched, KV-cached, left-padded\nN candidates per prompt", "stage", 9)
    box(ax, 3.3, 3.2, 3.0, 1.1, "LLM-as-a-judge (M_t itself)\nRewardConfig prompt\nK judgements, scores averaged", "stage", 9)
    box(ax, 0.5, 3.25, 2.4, 1.0, "pick a pair\nbest vs worst score\n(ties: no pair)", "stage", 9)
    box(ax, 0.5, 1.75, 2.4, 1.0, "preference pairs on disk\n+ reference log-probs\n+ readable JSONL", "data", 9)
    box(ax, 3.4, 1.8, 2.8, 0.9, "DPO\nreference = M_t", "stage", 10, "bold")

    arrow(ax, (2.7, 5.2), (3.4, 5.2))
    arrow(ax, (4.8, 4.7), (4.8, 4.3), "candidates")
    arrow(ax, (3.3, 3.75), (2.9, 3.75))
    arrow(ax, (1.7, 3.25), (1.7, 2.75))
    arrow(ax, (2.9, 2.25), (3.4, 2.25))
    arrow(ax, (6.2, 2.25), (7.0, 2.25))
    box(ax, 7.0, 1.9, 1.6, 0.7, "model M_t+1", "model", 10, "bold")
    arrow(ax, (7.4, 6.65), (6.2, 5.35), rad=-0.2)
    ax.text(6.75, 6.2, "samples,\njudges", fontsize=8.5, va="center")
    arrow(ax, (8.2, 2.6), (8.2, 6.65))
    ax.text(8.3, 4.6, "next iteration", fontsize=8.5, va="center", rotation=90)

    # other stages
    box(ax, 0.2, 0.1, 2.9, 0.8, "SPIN (SelfPlayConfig)\nreal answers vs answers of frozen θt", "side", 9)
    box(ax, 3.3, 0.1, 3.1, 0.8, "external-reward DPO\nreward model or reward fn judges", "side", 9)
    box(ax, 6.6, 0.1, 2.2, 0.8, "checkpoint after\nevery stage; resume", "side", 9)
    ax.text(4.5, 1.03, "stages in any order: SFT, SPIN, self-reward DPO, external-reward DPO", fontsize=9,
            ha="center", style="italic")

    fig.savefig(OUT, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
