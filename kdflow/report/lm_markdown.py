"""The evaluate step's page for a causal-lm run: perplexity, token accuracy, agreement,
generation speed, a few greedy continuations, the champion and the gates."""

from __future__ import annotations

from typing import Any

from kdflow.report.pages import cost_lines, gate_lines, not_passed
from kdflow.report.pages import fmt_or_dash as _num
from kdflow.report.seeds import seeds_lines

CONTINUATION_CHARS = 200


def _row(label: str, m: dict[str, Any]) -> str:
    size = m.get("file_bytes")
    return (
        f"| {label} | {_num(m.get('perplexity'), ',.3f')} | "
        f"{_num(m.get('token_accuracy'), '.4f')} | {_num(m.get('agreement'), '.4f')} | "
        f"{_num(m.get('params'), ',')} | {_num(m.get('tokens_per_s'), ',.1f')} | "
        f"{'–' if size is None else f'{size / 1024:,.1f}'} |"
    )


def _one_line(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= CONTINUATION_CHARS else text[:CONTINUATION_CHARS] + "…"


def lm_report_markdown(summary: dict[str, Any]) -> str:
    """The causal-lm evaluation as Markdown, for the KFP UI and the run folder."""
    tokens = summary["student"].get("tokens", 0)
    lines = [
        "# kdflow evaluation (causal LM)",
        "",
        f"Test split: {tokens:,} counted tokens. Perplexity is exp of the mean negative "
        "log-likelihood per token; agreement is the share of tokens where the student's top "
        "token is the teacher ensemble's; generation speed is greedy decoding at batch 1 on "
        "the CPU (KV cache), from the first words of the first test documents.",
        "",
        "| model | perplexity | token accuracy | agreement | params | tokens/s | size (KiB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_row(f"teacher `{t['spec']}`", t) for t in summary["teachers"]]
    lines.append(_row("ensemble", summary["ensemble"]))
    for name in ("baseline", "student"):
        lines.append(_row(f"{name} `{summary[name]['spec']}`", summary[name]))
    lines += ["", "## Greedy continuations", "", "| prompt | student | first teacher |",
              "| --- | --- | --- |"]
    student = summary["student"].get("continuations") or []
    teacher = (summary["teachers"][0].get("continuations") or []) if summary["teachers"] else []
    for i, item in enumerate(student):
        other = teacher[i]["continuation"] if i < len(teacher) else ""
        lines.append(f"| {_one_line(item['prompt'])} | {_one_line(item['continuation'])} | "
                     f"{_one_line(other)} |")
    champion = summary.get("champion")
    lines += [
        "",
        "## Champion",
        "",
        f"Current `champion`: version {champion['version']}, perplexity "
        f"{champion['perplexity']:.3f} on this test split." if champion else "No `champion` "
        "compared." if summary.get("champion_seen") else "No `champion` yet.",
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
