"""The run's pictures, drawn from its summary (`kdflow.steps.evaluate` returns it).

Each function takes plain data and returns a matplotlib `Figure`; `render_all` writes every
picture the summary has data for as PNG. Figures are made with the object API and saved by
the Agg canvas: no pyplot state, no display, safe in pipeline pods and threads.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

DPI = 100
WIDE = (10.0, 4.2)
# One colour per role, the same in every picture.
COLOURS = {"teacher": "#7f7f7f", "ensemble": "#1f77b4", "baseline": "#ff7f0e",
           "student": "#2ca02c", "champion": "#9467bd"}
MARKERS = {"teacher": "o", "ensemble": "*", "baseline": "s", "student": "D"}
# Above this many classes, labels and per-cell counts would only be noise.
MAX_LABELLED_CLASSES = 20

# File names of the pictures every run has the data for, whatever its data.
NAMES = ("tradeoff", "training_curves", "reliability", "confusion_matrix", "per_class_accuracy",
         "data_profile")
IMAGE_NAMES = ("misclassified",)
"""Pictures of image data only (the test images the student gets wrong)."""
ORDER = (*NAMES[:5], *IMAGE_NAMES, *NAMES[5:])
"""Every picture's name, in the order the report shows them."""
GRID_COLUMNS = 4
"""Panels a row of the misclassified images' grid (16 make a 4 × 4 grid)."""


def _figure(size: tuple[float, float] = WIDE) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))
    return path


def _short(spec: str, limit: int = 28) -> str:
    return spec if len(spec) <= limit else spec[: limit - 1] + "…"


# ----------------------------------------------------------------------------- trade-off


def model_points(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """(role, label, accuracy, latency, params) of every model in the summary.

    The ensemble's cost is that of running all its teachers: latencies and params add up.
    """
    teachers = summary.get("teachers") or []
    points = [
        {"role": "teacher", "label": _short(t["spec"]), "accuracy": t["accuracy"],
         "latency_ms": t["latency_ms"], "params": t["params"]}
        for t in teachers
    ]
    if teachers and summary.get("ensemble"):
        points.append({
            "role": "ensemble", "label": f"ensemble of {len(teachers)}",
            "accuracy": summary["ensemble"]["accuracy"],
            "latency_ms": sum(t["latency_ms"] for t in teachers),
            "params": sum(t["params"] for t in teachers),
        })
    for role in ("baseline", "student"):
        m = summary.get(role)
        if m:
            points.append({"role": role, "label": role, "accuracy": m["accuracy"],
                           "latency_ms": m["latency_ms"], "params": m["params"]})
    return points


def tradeoff(summary: dict[str, Any]) -> Figure:
    """Accuracy against CPU latency and against parameters: what distillation buys."""
    fig = _figure()
    axes = fig.subplots(1, 2, sharey=True)
    points = model_points(summary)
    for ax, key, title in (
        (axes[0], "latency_ms", "CPU latency, batch 1 (ms, log scale)"),
        (axes[1], "params", "parameters (log scale)"),
    ):
        for p in points:
            ax.scatter(p[key], p["accuracy"], s=160 if p["role"] == "ensemble" else 70,
                       color=COLOURS[p["role"]], marker=MARKERS[p["role"]],
                       edgecolor="black", linewidth=0.6, zorder=3, label=p["label"])
            ax.annotate(p["label"], (p[key], p["accuracy"]), textcoords="offset points",
                        xytext=(6, 5), fontsize=8)
        values = [p[key] for p in points]
        if values and min(values) > 0:
            ax.set_xscale("log")
            # Written plainly; at 1-2-5 steps when the range is under about a decade.
            decades = math.log10(max(values) / min(values))
            subs = (1.0, 2.0, 5.0) if decades < 1.5 else (1.0,)
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
            ax.xaxis.set_major_formatter(FuncFormatter(_plain))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.25, y=0.12)  # room for the labels of the outermost points
        ax.set_xlabel(title)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    fig.suptitle("Accuracy vs cost: teachers, ensemble, baseline and distilled student")
    return fig


def _plain(value: float, _: Any = None) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


# ------------------------------------------------------------------------ training curves


def training_curves(history: dict[str, Any]) -> Figure:
    """Hard (cross-entropy) and soft (KL to the teachers) loss and val accuracy per epoch.

    `history` is the summary's: `{"teachers": [[epoch, ...], ...], "student": [...],
    "baseline": [...]}`, each epoch a dict with `epoch`, `hard_loss`, `soft_loss`,
    `val_accuracy`. Teachers train on labels only, so they have no soft loss.
    """
    fig = _figure((12.0, 4.0))
    hard_ax, soft_ax, acc_ax = fig.subplots(1, 3)
    series: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("teacher", f"teacher {i}", epochs)
        for i, epochs in enumerate(history.get("teachers") or [])
    ]
    series += [(role, role, history[role]) for role in ("baseline", "student")
               if history.get(role)]
    for role, label, epochs in series:
        x = [e["epoch"] for e in epochs]
        style = {"color": COLOURS[role], "marker": MARKERS[role] if len(x) <= 20 else None,
                 "markersize": 4,
                 "linestyle": "--" if role == "teacher" else "-",
                 "alpha": 0.7 if role == "teacher" else 1.0}
        hard_ax.plot(x, [e["hard_loss"] for e in epochs], label=label, **style)
        acc_ax.plot(x, [e["val_accuracy"] for e in epochs], label=label, **style)
        if role == "student":
            soft_ax.plot(x, [e["soft_loss"] for e in epochs], label=label, **style)
    hard_ax.set_title("hard loss: cross-entropy with the labels")
    soft_ax.set_title("soft loss: KL to the teachers (student)")
    acc_ax.set_title("validation accuracy")
    for ax in (hard_ax, soft_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    if not history.get("student"):
        soft_ax.text(0.5, 0.5, "no distillation history", ha="center", va="center",
                     transform=soft_ax.transAxes)
    acc_ax.legend(fontsize=8, loc="lower right")
    return fig


# ---------------------------------------------------------------------------- calibration


def reliability(curves: dict[str, list[dict[str, Any]]]) -> Figure:
    """Reliability diagram: accuracy against confidence per bin (the diagonal is perfect
    calibration), with the share of rows in each bin underneath."""
    fig = _figure((6.5, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1, label="perfect")
    width = 1.0 / max(len(b) for b in curves.values()) if curves else 0.1
    for i, (name, bins) in enumerate(curves.items()):
        role = name if name in COLOURS else "teacher"
        used = [b for b in bins if b["count"]]
        top.plot([b["confidence"] for b in used], [b["accuracy"] for b in used],
                 color=COLOURS[role], marker=MARKERS[role], label=name)
        total = sum(b["count"] for b in bins) or 1
        offset = (i - (len(curves) - 1) / 2) * width / max(len(curves), 1)
        bottom.bar([(b["lower"] + b["upper"]) / 2 + offset for b in bins],
                   [b["count"] / total for b in bins], width=width / max(len(curves), 1),
                   color=COLOURS[role], label=name)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left")
    top.set_title("Reliability: ensemble vs student (test split)")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("share of rows")
    bottom.grid(True, alpha=0.3)
    return fig


# ------------------------------------------------------------------------ per-class views


def confusion_matrix(matrix: list[list[int]], classes: list[str]) -> Figure:
    """The student's confusion matrix: true class as rows, prediction as columns; colour is
    the share of the row, so rare classes show as clearly as common ones."""
    n = len(classes)
    side = min(8.0, max(5.0, 0.3 * n + 3.5))
    fig = _figure((side, side * 0.85))
    ax = fig.subplots()
    rows = [sum(r) or 1 for r in matrix]
    shares = [[v / rows[i] for v in row] for i, row in enumerate(matrix)]
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), labels=classes, fontsize=8)
        ax.set_yticks(range(n), labels=classes, fontsize=8)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value:
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                            color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Student confusion matrix (test split)")
    return fig


def per_class_accuracy(series: dict[str, dict[str, float]],
                       flagged: dict[str, str] | None = None) -> Figure:
    """Accuracy of each class, side by side for each model in `series` (name -> class ->
    accuracy); above MAX_LABELLED_CLASSES classes, lines over classes sorted by the first.
    `flagged` (class -> `failed` or `inconclusive`: the max_class_regression gate's classes)
    are marked on the axis, in red, with the word."""
    flagged = flagged or {}
    fig = _figure()
    ax = fig.subplots()
    names = list(series)
    classes = list(series[names[0]]) if names else []
    if len(classes) <= MAX_LABELLED_CLASSES:
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            role = name if name in COLOURS else "teacher"
            ax.bar([c + (i - (len(names) - 1) / 2) * width for c in range(len(classes))],
                   [series[name][k] for k in classes], width=width, label=name,
                   color=COLOURS[role])
        ax.set_xticks(range(len(classes)), labels=[
            f"{k}\n{flagged[k]}" if k in flagged else k for k in classes])
        for label, k in zip(ax.get_xticklabels(), classes, strict=True):
            if k in flagged:
                label.set_color("#8a1c1c")
                label.set_fontweight("bold")
        ax.set_xlabel("class" + ("; marked: dropped vs the champion past --max-class-regression"
                                 if flagged else ""))
    else:
        order = sorted(classes, key=lambda k: series[names[0]][k])
        for name in names:
            role = name if name in COLOURS else "teacher"
            ax.plot(range(len(order)), [series[name][k] for k in order], label=name,
                    color=COLOURS[role])
        ax.set_xlabel(f"class, sorted by {names[0]} accuracy ({len(classes)} classes)"
                      + (f"; {len(flagged)} dropped vs the champion: "
                         + ", ".join(list(flagged)[:5]) if flagged else ""))
        for x, k in enumerate(order):
            if k in flagged:
                ax.axvline(x, color="#8a1c1c", alpha=0.4, linewidth=1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Per-class accuracy: " + " vs ".join(names))
    return fig


# ---------------------------------------------------------------------- misclassified images


def thumbnails(entry: dict[str, Any]) -> list[Any]:
    """The summary's thumbnails of the misclassified images as uint8 arrays (H × W for
    grayscale, H × W × 3 for colour), one per shown row: the strip that
    `kdflow.evaluation.summary.thumbnail_strip` wrote, cut back into its tiles."""
    import base64

    import numpy as np
    from PIL import Image

    thumbs = entry.get("thumbnails") or {}
    if not thumbs.get("png"):
        return []
    with Image.open(io.BytesIO(base64.b64decode(thumbs["png"]))) as image:
        strip = np.asarray(image.convert("L" if thumbs.get("channels") == 1 else "RGB"))
    width = int(thumbs["size"][1])
    return [strip[:, i : i + width] for i in range(0, strip.shape[1], width)]


def misclassified_grid(entry: dict[str, Any]) -> Figure:
    """The test images the student gets wrong (the summary's `misclassified`: its most
    confident mistakes), GRID_COLUMNS a row: each with the true class, the student's top
    class and the teachers' ensemble's, with their probabilities. Grayscale is drawn in
    grey and small images are enlarged without smoothing, so each pixel stays a pixel."""
    shown = entry.get("shown") or []
    images = thumbnails(entry)[: len(shown)]
    columns = min(GRID_COLUMNS, max(len(images), 1))
    rows = max(1, math.ceil(len(images) / columns))
    fig = _figure((2.3 * columns, 2.5 * rows + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item, pixels in zip(axes.flat, shown, images, strict=False):
        grey = pixels.ndim == 2
        ax.imshow(pixels, cmap="gray" if grey else None, vmin=0, vmax=255,
                  interpolation="nearest")
        agrees = item["ensemble"] == item["true"]
        ax.set_title(f"true {_short(item['true'], 14)}\n"
                     f"student {_short(item['student'], 12)} ({item['student_probability']:.2f})\n"
                     f"ensemble {_short(item['ensemble'], 12)} "
                     f"({item['ensemble_probability']:.2f})",
                     fontsize=8, color="black" if agrees else "#8a1c1c")
    fig.suptitle(f"Test images the student gets wrong: {len(images)} shown of "
                 f"{entry.get('count', len(shown))} (of {entry.get('rows', '?')}), most "
                 "confident first")
    return fig


# ------------------------------------------------------------------------------ the data


def data_profile(dataset: dict[str, Any]) -> Figure:
    """Class balance of each split, and every feature's range (min–max) and mean ± std.

    `dataset` is the validate step's result: `class_counts` by split, and the validation
    scan's per-feature statistics (`validation.statistics.train.features`).
    """
    fig = _figure((12.0, 4.2))
    balance, ranges = fig.subplots(1, 2, width_ratios=[1, 1.6])
    counts: dict[str, dict[str, int]] = dataset.get("class_counts") or {}
    if not counts:  # older results: the validation scan's counts of the input file
        stats = ((dataset.get("validation") or {}).get("statistics") or {})
        counts = {split: (s.get("label") or {}).get("counts") or {}
                  for split, s in stats.items()}
    classes = sorted({c for split in counts.values() for c in split}, key=_class_key)
    width = 0.8 / max(len(counts), 1)
    for i, (split, by_class) in enumerate(counts.items()):
        balance.bar([c + (i - (len(counts) - 1) / 2) * width for c in range(len(classes))],
                    [by_class.get(k, 0) for k in classes], width=width, label=split)
    if len(classes) <= MAX_LABELLED_CLASSES:
        balance.set_xticks(range(len(classes)), labels=classes)
    balance.set_xlabel("class")
    balance.set_ylabel("rows")
    balance.set_title("Class balance by split")
    balance.legend(fontsize=8)
    balance.grid(True, axis="y", alpha=0.3)

    features = _train_features(dataset)
    names = [n for n, f in features.items() if _finite(f.get("min")) and _finite(f.get("max"))]
    x = range(len(names))
    lows = [float(features[n]["min"]) for n in names]
    highs = [float(features[n]["max"]) for n in names]
    means = [float(features[n]["mean"]) if _finite(features[n].get("mean")) else math.nan
             for n in names]
    stds = [float(features[n]["std"]) if _finite(features[n].get("std")) else 0.0
            for n in names]
    ranges.vlines(x, lows, highs, color="#c7c7c7", linewidth=3, label="min – max")
    ranges.errorbar(x, means, yerr=stds, fmt="o", markersize=2, color=COLOURS["ensemble"],
                    elinewidth=1, label="mean ± std")
    ranges.set_xlabel(f"feature ({len(names)} numeric features, in column order)")
    ranges.set_ylabel("value")
    ranges.set_title("Feature ranges (train split as read)")
    ranges.legend(fontsize=8, loc="upper right")
    ranges.grid(True, axis="y", alpha=0.3)
    return fig


def _train_features(dataset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    stats = (dataset.get("validation") or {}).get("statistics") or {}
    split: dict[str, Any] = stats.get("train") or next(iter(stats.values()), {})
    return {name: f for name, f in (split.get("features") or {}).items() if "min" in f}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _class_key(name: str) -> tuple[int, float | str]:
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


# ----------------------------------------------------------------------------- all of them


def figures(summary: dict[str, Any]) -> dict[str, Figure]:
    """Every picture the summary has the data for, by name (see ORDER)."""
    out: dict[str, Figure] = {}
    if summary.get("teachers") and summary.get("student"):
        out["tradeoff"] = tradeoff(summary)
    history = summary.get("history") or {}
    if any(history.get(k) for k in ("teachers", "student", "baseline")):
        out["training_curves"] = training_curves(history)
    curves = {role: summary[role]["reliability"] for role in ("ensemble", "student")
              if (summary.get(role) or {}).get("reliability")}
    if curves:
        out["reliability"] = reliability(curves)
    student = summary.get("student") or {}
    if student.get("confusion_matrix") and student.get("per_class_accuracy"):
        out["confusion_matrix"] = confusion_matrix(student["confusion_matrix"],
                                                   list(student["per_class_accuracy"]))
    per_class = {role: summary[role]["per_class_accuracy"]
                 for role in ("ensemble", "champion", "student")
                 if (summary.get(role) or {}).get("per_class_accuracy")}
    if per_class:
        slices = ((summary.get("gates") or {}).get("max_class_regression") or {})
        classes = (slices.get("evidence") or {}).get("classes") or {}
        out["per_class_accuracy"] = per_class_accuracy(per_class, {
            k: v["status"] for k, v in classes.items() if v["status"] != "passed"})
    wrong = summary.get("misclassified") or {}
    if wrong.get("shown") and (wrong.get("thumbnails") or {}).get("png"):
        out["misclassified"] = misclassified_grid(wrong)
    dataset = summary.get("dataset") or {}
    if dataset.get("class_counts") or (dataset.get("validation") or {}).get("statistics"):
        out["data_profile"] = data_profile(dataset)
    return out


def render_all(summary: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write every picture of `summary` as `folder/<name>.png`; returns name -> path."""
    return {name: save(fig, folder / f"{name}.png") for name, fig in figures(summary).items()}
