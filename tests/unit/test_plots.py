"""The run's pictures (`kdflow.report.plots`), drawn from a real run summary (tests/runs.py)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from kdflow.report import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_every_picture_is_written_as_a_png_of_its_figure_size(run_summary, tmp_path):
    written = plots.render_all(run_summary, tmp_path / "plots")
    assert set(written) == set(plots.NAMES)
    figures = plots.figures(run_summary)
    for name, path in written.items():
        assert path == tmp_path / "plots" / f"{name}.png"
        width, height = png_size(path.read_bytes())
        fig_w, fig_h = figures[name].get_size_inches() * plots.DPI
        assert (width, height) == (round(fig_w), round(fig_h)), name


def test_pictures_are_not_blank(run_summary):
    from matplotlib.image import imread

    for name, fig in plots.figures(run_summary).items():
        pixels = imread(io.BytesIO(plots.png_bytes(fig)), format="png")
        # Axes, text and data make many distinct shades; a blank canvas has one.
        assert pixels[..., :3].std() > 0.05, name
        assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50, name


def test_tradeoff_places_every_model_at_its_accuracy_latency_and_params(run_summary):
    fig = plots.tradeoff(run_summary)
    latency_ax, params_ax = fig.axes
    points = plots.model_points(run_summary)
    assert [p["role"] for p in points] == ["teacher", "teacher", "ensemble", "baseline",
                                           "student"]
    for ax, key in ((latency_ax, "latency_ms"), (params_ax, "params")):
        drawn = np.array([c.get_offsets()[0] for c in ax.collections])
        np.testing.assert_allclose(drawn, [(p[key], p["accuracy"]) for p in points])
    assert latency_ax.get_xscale() == "log"


def test_ensemble_costs_all_its_teachers_together(run_summary):
    ensemble = next(p for p in plots.model_points(run_summary) if p["role"] == "ensemble")
    teachers = run_summary["teachers"]
    assert ensemble["params"] == sum(t["params"] for t in teachers)
    assert ensemble["latency_ms"] == pytest.approx(sum(t["latency_ms"] for t in teachers))
    assert ensemble["accuracy"] == run_summary["ensemble"]["accuracy"]


def test_training_curves_show_hard_and_soft_loss_apart_for_every_model(run_summary):
    history = run_summary["history"]
    hard_ax, soft_ax, acc_ax = plots.training_curves(history).axes
    labels = [line.get_label() for line in hard_ax.lines]
    assert labels == ["teacher 0", "teacher 1", "baseline", "student"]
    for line, epochs in zip(hard_ax.lines, [*history["teachers"], history["baseline"],
                                            history["student"]], strict=True):
        assert list(line.get_ydata()) == pytest.approx([e["hard_loss"] for e in epochs])
    # Only the student learns from the teachers: one soft-loss curve, a KL (>= 0).
    assert [line.get_label() for line in soft_ax.lines] == ["student"]
    soft = list(soft_ax.lines[0].get_ydata())
    assert soft == pytest.approx([e["soft_loss"] for e in history["student"]])
    assert all(v >= 0 for v in soft)
    assert list(acc_ax.lines[-1].get_ydata()) == pytest.approx(
        [e["val_accuracy"] for e in history["student"]])


def test_reliability_bins_reproduce_the_reported_ece(run_summary):
    for role in ("student", "ensemble"):
        bins = run_summary[role]["reliability"]
        total = sum(b["count"] for b in bins)
        assert total == run_summary["dataset"]["splits"]["test"]
        ece = sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                  for b in bins if b["count"])
        assert ece == pytest.approx(run_summary[role]["ece"], abs=1e-9)


def test_reliability_diagram_draws_ensemble_and_student_over_the_diagonal(run_summary):
    curves = {r: run_summary[r]["reliability"] for r in ("ensemble", "student")}
    top, bottom = plots.reliability(curves).axes
    assert [line.get_label() for line in top.lines] == ["perfect", "ensemble", "student"]
    student_line = top.lines[2]
    used = [b for b in curves["student"] if b["count"]]
    assert list(student_line.get_xdata()) == pytest.approx([b["confidence"] for b in used])
    assert list(student_line.get_ydata()) == pytest.approx([b["accuracy"] for b in used])
    shares = [p.get_height() for p in bottom.patches]
    assert sum(shares) == pytest.approx(2.0)  # each model's bins share all its rows


def test_confusion_matrix_writes_every_nonzero_count_in_its_cell(run_summary):
    student = run_summary["student"]
    matrix = student["confusion_matrix"]
    ax = plots.confusion_matrix(matrix, list(student["per_class_accuracy"])).axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text())
             for t in ax.texts}
    expected = {(i, j): v for i, row in enumerate(matrix) for j, v in enumerate(row) if v}
    assert cells == expected
    assert sum(cells.values()) == run_summary["dataset"]["splits"]["test"]


def test_per_class_accuracy_bars_are_the_summary_values(run_summary):
    series = {r: run_summary[r]["per_class_accuracy"] for r in ("ensemble", "student")}
    ax = plots.per_class_accuracy(series).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx(list(series["ensemble"].values())
                                    + list(series["student"].values()))
    assert [t.get_text() for t in ax.get_xticklabels()] == run_summary["dataset"]["classes"]


def test_data_profile_counts_every_prepared_row_and_ranges_every_feature(run_summary):
    dataset = run_summary["dataset"]
    balance, ranges = plots.data_profile(dataset).axes
    assert sum(p.get_height() for p in balance.patches) == sum(dataset["splits"].values())
    spans = ranges.collections[0].get_segments()
    assert len(spans) == dataset["features"] == 64
    features = dataset["validation"]["statistics"]["train"]["features"]
    first = next(iter(features.values()))
    assert spans[0][:, 1].tolist() == pytest.approx([first["min"], first["max"]])


def test_many_classes_switch_to_sorted_lines(tmp_path: Path):
    classes = [f"c{i}" for i in range(50)]
    rng = np.random.default_rng(0)
    series = {"ensemble": dict(zip(classes, rng.random(50), strict=True)),
              "student": dict(zip(classes, rng.random(50), strict=True))}
    ax = plots.per_class_accuracy(series).axes[0]
    assert not ax.patches and len(ax.lines) == 2
    assert list(ax.lines[0].get_ydata()) == sorted(series["ensemble"].values())
    path = plots.save(plots.confusion_matrix(np.eye(50, dtype=int).tolist(), classes),
                      tmp_path / "cm.png")
    assert png_size(path.read_bytes())[0] > 0


def test_summary_without_history_draws_what_it_can(run_summary):
    partial = {k: v for k, v in run_summary.items() if k != "history"}
    assert set(plots.figures(partial)) == set(plots.NAMES) - {"training_curves"}


def misclassified_entry(
    shown: int, channels: int = 1, side: int = 8
) -> tuple[dict, np.ndarray]:
    """A summary's `misclassified` of `shown` random images, as the evaluation writes it."""
    from kdflow.evaluation.summary import thumbnail_strip

    rng = np.random.default_rng(shown)
    pixels = rng.integers(0, 256, (shown, channels, side, side), dtype=np.uint8)
    items = [{"row": i, "true": "3", "student": "5", "student_probability": 0.9 - i / 100,
              "ensemble": "3" if i % 2 else "5", "ensemble_probability": 0.6}
             for i in range(shown)]
    entry = {"count": shown + 4, "rows": 100, "shown": items}
    if shown:
        entry["thumbnails"] = thumbnail_strip(pixels)
    return entry, pixels


@pytest.mark.parametrize(("shown", "channels", "grid"), [(16, 1, (4, 4)), (5, 3, (2, 4)),
                                                         (2, 1, (1, 2))])
def test_the_misclassified_grid_has_a_panel_per_image(shown, channels, grid):
    entry, pixels = misclassified_entry(shown, channels)
    fig = plots.misclassified_grid(entry)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == shown and len(fig.axes) == grid[0] * grid[1]
    first = panels[0].images[0]
    drawn = np.asarray(first.get_array())
    assert np.array_equal(drawn, pixels[0, 0] if channels == 1 else pixels[0].transpose(1, 2, 0))
    assert first.get_interpolation() == "nearest"
    assert (first.get_cmap().name == "gray") == (channels == 1)
    title = panels[1].get_title()
    assert "true 3" in title and "student 5 (0.89)" in title and "ensemble 3 (0.60)" in title
    data = plots.png_bytes(fig)
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000


def test_the_grid_is_in_the_pictures_only_when_the_student_gets_images_wrong(run_summary):
    entry, _ = misclassified_entry(3)
    assert "misclassified" in plots.figures({**run_summary, "misclassified": entry})
    assert plots.ORDER.index("misclassified") == plots.ORDER.index("per_class_accuracy") + 1
    everything_right = {"count": 0, "rows": 100, "shown": []}
    assert "misclassified" not in plots.figures({**run_summary,
                                                 "misclassified": everything_right})
    assert "misclassified" not in plots.figures(run_summary)  # numeric data


def test_per_class_chart_draws_the_champion_and_marks_the_classes_that_dropped(run_summary):
    summary = json.loads(json.dumps(run_summary))
    classes = list(summary["student"]["per_class_accuracy"])
    summary["champion"] = {"version": 1, "accuracy": 0.9,
                           "per_class_accuracy": dict.fromkeys(classes, 0.9)}
    summary["gates"]["max_class_regression"] = {
        "passed": False, "status": "failed", "value": 0.3, "threshold": 0.1, "op": "<=",
        "detail": "", "evidence": {"classes": {
            classes[1]: {"status": "failed", "drop": 0.3},
            classes[2]: {"status": "inconclusive", "drop": 0.15},
            classes[3]: {"status": "passed", "drop": 0.0}}}}
    ax = plots.figures(summary)["per_class_accuracy"].axes[0]
    assert ax.get_legend_handles_labels()[1] == ["ensemble", "champion", "student"]
    ticks = {t.get_text(): t.get_color() for t in ax.get_xticklabels()}
    assert ticks[f"{classes[1]}\nfailed"] == ticks[f"{classes[2]}\ninconclusive"] == "#8a1c1c"
    assert ticks[classes[3]] != "#8a1c1c"
