"""A stage's training curves as one PNG: a small grid of panels drawn from its ``metrics.jsonl`` records.

``write_curves(kind, records, path)`` picks the panels of the stage's kind (sft, reward, ppo, grpo, dpo), skips
those whose metrics were never logged, and writes nothing for an empty record list. It draws with matplotlib's
object API on an Agg canvas (no pyplot, so the caller's backend and open figures are left alone); the same
records give the same bytes (the PNG carries no version stamp). Without matplotlib it logs one line and returns
None: pictures are a convenience, and matplotlib an optional dependency.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

COLUMNS = 3  # panels per row
PANEL_SIZE = (4.0, 2.8)  # inches; at DPI 100 a three-panel row is 1200 pixels wide
DPI = 100
MARKERS_BELOW = 30  # series with fewer points than this get a marker on each point (eval runs are sparse)


@dataclass(frozen=True)
class Series:
    """One line of a panel: the first of ``keys`` a record holds, by step; ``spread`` shades value ± spread."""

    label: str
    keys: tuple[str, ...]
    spread: str | None = None


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    series: tuple[Series, ...]
    fraction: bool = False  # a value in [0, 1]: the y axis shows all of it


def _panel(title: str, ylabel: str, *series: Series, fraction: bool = False) -> Panel:
    return Panel(title, ylabel, series, fraction)


def _line(label: str, *keys: str, spread: str | None = None) -> Series:
    return Series(label, keys, spread)


# Per kind, the curves in the order they are drawn. The keys are what each stage logs: transformers' log keys
# (sft, reward), TRL v0.7's PPO stats (ppo), TRL 1.x's GRPO and DPO metrics (grpo, dpo). GRPO's per-function
# reward means (rewards/<name>/mean) are found in the records; see _reward_functions_panel.
PANELS: dict[str, tuple[Panel, ...]] = {
    "sft": (
        _panel("Loss", "loss", _line("train", "loss"), _line("eval", "eval_loss")),
    ),
    "reward": (
        _panel("Loss", "loss", _line("train", "loss"), _line("eval", "eval_loss")),
        _panel("Eval accuracy", "accuracy", _line("eval", "eval_accuracy"), fraction=True),
    ),
    "ppo": (
        _panel("Mean score", "score", _line("mean ± std", "env/reward_mean", "ppo/mean_scores",
                                            spread="env/reward_std")),
        _panel("KL to the reference", "KL", _line("KL", "objective/kl")),
        _panel("KL coefficient", "coefficient", _line("KL coef", "objective/kl_coef")),
    ),
    "grpo": (
        _panel("Reward", "reward", _line("mean ± std", "reward", spread="reward_std")),
        _panel("KL to the reference", "KL", _line("KL", "kl")),
        _panel("Completion length", "tokens", _line("mean", "completions/mean_length")),
        _panel("Clip ratio", "fraction", _line("region mean", "clip_ratio/region_mean"), fraction=True),
        _panel("Groups with zero reward std", "fraction", _line("fraction", "frac_reward_zero_std"), fraction=True),
    ),
    "dpo": (
        _panel("Loss", "loss", _line("train", "loss"), _line("eval", "eval_loss")),
        _panel("Reward accuracy", "accuracy", _line("train", "rewards/accuracies"),
               _line("eval", "eval_rewards/accuracies"), fraction=True),
        _panel("Reward margin", "chosen − rejected", _line("train", "rewards/margins"),
               _line("eval", "eval_rewards/margins")),
        _panel("Chosen vs rejected rewards", "implicit reward", _line("chosen", "rewards/chosen"),
               _line("rejected", "rewards/rejected")),
    ),
}
# Held-out prompts scored before and after training (result metrics <key>Before / <key>After), with their labels.
HELD_OUT = {"reward": "reward", "vader": "VADER"}


def write_curves(kind: str, records: list[dict], path: str | Path) -> Path | None:
    """Draw the stage's curves into the PNG file ``path``; the path written, or None when there was nothing to
    draw (no records, none of the kind's metrics) or matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib is not installed: no training curves drawn (pip install matplotlib)")
        return None
    steps = [record for record in records if "result" not in record]
    result = next((record["result"] for record in reversed(records) if "result" in record), None)
    curves = [(panel, lines) for panel in panels_for(kind, steps) if (lines := _lines(panel, steps))]
    held_out = before_after((result or {}).get("metrics", {}))
    if not curves and not held_out:
        return None

    count = len(curves) + bool(held_out)
    columns = min(COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + 0.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    last_step = max([record.get("totalSteps") or 0 for record in records]
                    + [record.get("step") or 0 for record in records])
    for ax, (panel, lines) in zip(axes, curves, strict=False):
        _draw_curves(ax, panel, lines)
        ax.set_xlim(0, max(last_step, 1) * 1.02)  # every panel spans the whole stage, however sparse its points
    if held_out:
        _draw_before_after(axes[len(curves)], held_out)
    for ax in axes[count:]:
        ax.set_visible(False)
    figure.suptitle(_title(kind, records), fontweight="bold")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    figure.savefig(partial, format="png", dpi=DPI, metadata={"Software": None})
    os.replace(partial, path)  # a reader (the live view, a browser) never sees half a picture
    return path


def _title(kind: str, records: list[dict]) -> str:
    stage, last = records[0].get("stage", kind), records[-1]
    name = f"{stage} ({kind})" if stage != kind else kind
    if last.get("step") is None:
        return name
    return f"{name}: step {last['step']}" + (f" of {last['totalSteps']}" if last.get("totalSteps") else "")


def panels_for(kind: str, records: list[dict]) -> list[Panel]:
    """The kind's panels; for grpo also one with each reward function's mean, when the records have them."""
    panels = list(PANELS.get(kind, ()))
    if kind == "grpo" and (functions := _reward_functions_panel(records)) is not None:
        panels.insert(1, functions)
    return panels


def _reward_functions_panel(records: list[dict]) -> Panel | None:
    names = sorted({key.split("/")[1] for record in records for key in record.get("metrics", {})
                    if key.startswith("rewards/") and key.endswith("/mean") and key.count("/") == 2})
    if not names:
        return None
    return Panel("Reward per function", "mean reward", tuple(_line(name, f"rewards/{name}/mean") for name in names))


def series_points(series: Series, records: list[dict]) -> tuple[list[int], list[float], list[float] | None]:
    """(steps, values, spreads) of one series, in step order; a step logged twice (a resumed run repeats the
    steps after its checkpoint) keeps its latest value."""
    by_step: dict[int, tuple[float, float | None]] = {}
    for record in records:
        metrics = record.get("metrics", {})
        key = next((key for key in series.keys if key in metrics), None)
        if key is None or record.get("step") is None:
            continue
        by_step[record["step"]] = (metrics[key], metrics.get(series.spread) if series.spread else None)
    steps = sorted(by_step)
    values = [by_step[step][0] for step in steps]
    spreads = [by_step[step][1] for step in steps]
    has_spread = series.spread is not None and all(spread is not None for spread in spreads)
    return steps, values, spreads if has_spread and steps else None


def _lines(panel: Panel, records: list[dict]) -> list[tuple[Series, tuple]]:
    return [(series, points) for series in panel.series if (points := series_points(series, records))[0]]


def before_after(metrics: dict) -> list[tuple[str, float, float]]:
    """(label, before, after) for each score of held-out prompts in a stage's result metrics."""
    return [(label, metrics[f"{key}Before"], metrics[f"{key}After"]) for key, label in HELD_OUT.items()
            if f"{key}Before" in metrics and f"{key}After" in metrics]


def _draw_curves(ax, panel: Panel, lines: list[tuple[Series, tuple]]) -> None:
    for series, (steps, values, spreads) in lines:
        marker = "o" if len(steps) < MARKERS_BELOW else None
        markersize = 6 if len(steps) == 1 else 3
        (drawn,) = ax.plot(steps, values, label=series.label, marker=marker, markersize=markersize, linewidth=1.2)
        if len(steps) == 1:  # one point (a final evaluation, say) has no curve to read: write its value
            ax.annotate(_number(values[0]), (steps[0], values[0]), textcoords="offset points", xytext=(-7, 0),
                        ha="right", va="center", fontsize=8, color=drawn.get_color(),
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})
        if spreads is not None:
            ax.fill_between(steps, [v - s for v, s in zip(values, spreads, strict=True)],
                            [v + s for v, s in zip(values, spreads, strict=True)],
                            color=drawn.get_color(), alpha=0.2, linewidth=0)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    if panel.fraction:
        ax.set_ylim(-0.03, 1.08)
    if len(lines) > 1 or lines[0][1][2] is not None:
        ax.legend(fontsize=8)


def _number(value: float) -> str:
    return f"{value:.2f}" if 0.01 <= abs(value) < 1000 else f"{value:.3g}"


def _draw_before_after(ax, scores: list[tuple[str, float, float]]) -> None:
    """Grouped bars: each held-out score before and after training, the values written on the bars."""
    width = 0.38
    positions = range(len(scores))
    for offset, (name, index) in ((-width / 2, ("before", 1)), (width / 2, ("after", 2))):
        values = [score[index] for score in scores]
        bars = ax.bar([p + offset for p in positions], values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(list(positions), [score[0] for score in scores])
    middle, half = (len(scores) - 1) / 2, max(len(scores), 2) / 2
    ax.set_xlim(middle - half, middle + half)  # one score: its bars keep their width, in the middle
    ax.axhline(0, color="black", linewidth=0.6)
    ax.margins(y=0.15)
    ax.set_title("Held-out prompts: before → after", fontsize=10)
    ax.set_ylabel("mean score")
    ax.legend(fontsize=8)
