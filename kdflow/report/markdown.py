"""The evaluate step's page as Markdown, for the KFP UI and the run folder: every model's
numbers, the student in ONNX Runtime, the champion, the student per class, and the gates."""

from __future__ import annotations

from typing import Any

from kdflow.evaluation.timing import THROUGHPUT_BATCH
from kdflow.report.pages import cost_lines, gate_lines, image_latency_text, not_passed
from kdflow.report.pages import fmt_or_dash as _num
from kdflow.report.seeds import seeds_lines


def _model_row(label: str, m: dict[str, Any]) -> str:
    size = m.get("file_bytes")
    return (
        f"| {label} | {m['accuracy']:.4f} | {_num(m.get('params'), ',')} | "
        f"{_num(m.get('latency_ms'), '.3f')} | {_num(m.get('latency_p95_ms'), '.3f')} | "
        f"{_num(m.get('throughput_per_s'), ',.0f')} | "
        f"{_num(m.get('macro_f1'), '.4f')} | {_num(m.get('ece'), '.4f')} | "
        f"{_num(m.get('nll'), '.4f')} | {_num(m.get('agreement'), '.4f')} | "
        f"{'–' if size is None else f'{size / 1024:,.1f}'} | {_num(m.get('flops'), ',')} |"
    )


def _runtime_row(label: str, m: dict[str, Any]) -> str:
    size = m.get("file_bytes")
    return (
        f"| {label} | {_num(m.get('latency_ms'), '.3f')} | "
        f"{_num(m.get('latency_p95_ms'), '.3f')} | {_num(m.get('throughput_per_s'), ',.0f')} | "
        f"{'–' if size is None else f'{size / 1024:,.1f}'} |"
    )


def _misclassified_lines(entry: dict[str, Any] | None) -> list[str]:
    """The test images the student gets wrong (image data only): how many, and a row per
    shown image (the report's grid draws them)."""
    if not entry:
        return []
    lines = ["", "## Misclassified test images", ""]
    if not entry.get("count"):
        return lines + [f"The student gets all {entry.get('rows', 0)} test images right."]
    lines += [
        f"The student gets {entry['count']} of {entry['rows']} test images wrong; its most "
        "confident mistakes:",
        "",
        "| test row | true | student | ensemble |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {m['row']} | {m['true']} | {m['student']} ({m['student_probability']:.2f}) | "
        f"{m['ensemble']} ({m['ensemble_probability']:.2f}) |"
        for m in entry.get("shown") or []
    ]
    return lines


def report_markdown(summary: dict[str, Any]) -> str:
    """The evaluation as Markdown, for the KFP UI and the run folder."""
    if summary.get("task") == "causal-lm":
        from kdflow.report.lm_markdown import lm_report_markdown

        return lm_report_markdown(summary)
    batch = summary.get("latency_batch", THROUGHPUT_BATCH)  # --latency-batch
    lines = [
        "# kdflow evaluation",
        "",
        "Test split; latency and throughput on one CPU thread (batch 1 and batch "
        f"{batch}); agreement is top-1 agreement with the teacher ensemble.",
        "",
        "| model | accuracy | params | latency (ms) | p95 (ms) | throughput (rows/s) | "
        "macro-F1 | ECE | NLL | agreement | size (KiB) | FLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in summary["teachers"]:
        lines.append(_model_row(f"teacher `{t['spec']}`", t))
    lines.append(_model_row("ensemble", summary["ensemble"]))
    for name in ("baseline", "student"):
        lines.append(_model_row(f"{name} `{summary[name]['spec']}`", summary[name]))
    student = summary["student"]
    texts = [(f"teacher `{t['spec']}`", t) for t in summary["teachers"]] + [
        (f"{name} `{summary[name]['spec']}`", summary[name]) for name in ("baseline", "student")
    ]
    if any(m.get("latency_text_ms") is not None for _, m in texts):
        lines += [
            "",
            "Text models are timed from raw text too (tokenisation included): "
            + "; ".join(
                f"{label} {_num(m.get('latency_text_ms'), '.3f')} ms" for label, m in texts
            )
            + ". The table's latency is the model alone (the speedup gate's).",
        ]
    if image_latency_text(summary):
        lines += ["", image_latency_text(summary).strip()
                  + f" Batches of {batch}; the table's latency is the model alone "
                  "on decoded pixels (the speedup gate's)."]
    onnx = student.get("onnx")
    if onnx and not onnx.get("exported", True):
        lines += ["", f"The student has no ONNX export: {onnx.get('reason', 'not exportable')}."]
    elif onnx:
        speed = student["latency_ms"] / onnx["latency_ms"] if onnx["latency_ms"] else None
        lines += [
            "",
            "## The student in ONNX Runtime",
            "",
            "| runtime | latency (ms) | p95 (ms) | throughput (rows/s) | size (KiB) |",
            "| --- | --- | --- | --- | --- |",
            _runtime_row("PyTorch", student),
            _runtime_row("ONNX Runtime", onnx),
            "",
            f"ONNX Runtime is {_num(speed, '.2f')}× PyTorch's batch-1 speed. Same predictions "
            f"on all {onnx['parity']['rows']} test rows: "
            f"{'yes' if onnx['parity']['predictions_match'] else 'NO'}; max |logit difference| "
            f"{onnx['parity']['max_abs_diff']:.2e}.",
        ]
    champion = summary.get("champion")
    lines += [
        "",
        "## Champion",
        "",
        f"Current `champion`: version {champion['version']}, accuracy "
        f"{champion['accuracy']:.4f} on this test split."
        if champion
        else "No `champion` yet.",
    ]
    if student.get("per_class_accuracy"):
        classes = list(student["per_class_accuracy"])
        lines += [
            "",
            "## Student per class",
            "",
            "| class | accuracy | " + " | ".join(f"→{c}" for c in classes) + " |",
            "| --- | --- | " + " | ".join("---" for _ in classes) + " |",
        ]
        matrix = student.get("confusion_matrix") or [[] for _ in classes]
        for name, row in zip(classes, matrix, strict=True):
            cells = " | ".join(str(v) for v in row)
            lines.append(f"| {name} | {student['per_class_accuracy'][name]:.4f} | {cells} |")
    lines += _misclassified_lines(summary.get("misclassified"))
    lines += [
        "",
        "## Gates",
        "",
        *gate_lines(summary, detail=True),
    ]
    verdict = "all gates passed" if summary["passed"] else (
        "not registered: " + ", ".join(not_passed(summary)))
    lines += seeds_lines(summary)
    lines += cost_lines(summary)
    lines += ["", f"**{verdict}**", ""]
    return "\n".join(lines)

