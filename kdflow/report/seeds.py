"""The seeds of a `--seeds` run in words and a table: each seed's student and baseline on
the test split, its own beats_baseline decision, and which seed was registered."""

from __future__ import annotations

from typing import Any

from kdflow.report.tables import table_md


def _figure(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric == "perplexity" else f"{value:.4f}"


def _gain(value: float, metric: str) -> str:
    return f"{value:+.4f} nats" if metric == "perplexity" else f"{value * 100:+.1f} points"


def seeds_sentence(summary: dict[str, Any]) -> str | None:
    """One line: the seeds' mean and spread, how many beat their baseline alone, and the
    seed chosen; None for a one-seed run."""
    seeds = summary.get("seeds")
    if not seeds:
        return None
    metric = seeds["metric"]
    s, b, g = seeds["student"], seeds["baseline"], seeds["gain"]
    return (f"seeds {' '.join(map(str, seeds['seeds']))}: student {metric} "
            f"{_figure(s['mean'], metric)} ± {_figure(s['std'], metric)}, baseline "
            f"{_figure(b['mean'], metric)} ± {_figure(b['std'], metric)}, gain "
            f"{_gain(g['mean'], metric)} (± {_gain(g['std'], metric).lstrip('+')}); "
            f"{seeds['won']} of {len(seeds['seeds'])} beat their baseline alone; seed "
            f"{seeds['chosen']} judged by the other gates ({seeds['chosen_by']})")


def seeds_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """The seeds as a table (headers, rows of plain text); None for a one-seed run."""
    seeds = summary.get("seeds")
    if not seeds:
        return None
    metric = seeds["metric"]
    rows = []
    for r in seeds["runs"]:
        interval = ("–" if r.get("low") is None else
                    f"[{_gain(r['low'], metric)}, {_gain(r['high'], metric)}]")
        val = "–" if r.get("val_accuracy") is None else f"{r['val_accuracy']:.4f}"
        rows.append([f"{r['seed']}{' (chosen)' if r['chosen'] else ''}", val,
                     _figure(r["student"], metric), _figure(r["baseline"], metric),
                     _gain(r["gain"], metric), interval, r["decision"]])
    return (["seed", "val accuracy", f"student {metric}", f"baseline {metric}", "gain",
             "interval", "alone"], rows)


SEEDS_NOTE = ("beats_baseline decides on every seed together (the Gates table); each seed's "
              "own decision is in the last column.")


def seeds_lines(summary: dict[str, Any]) -> list[str]:
    """The report's "Seeds" section ([] for a one-seed run)."""
    table = seeds_table(summary)
    if table is None:
        return []
    return ["", "## Seeds", "", seeds_sentence(summary) or "", "", *table_md(*table), "",
            SEEDS_NOTE]
