"""A causal-lm run's pages from a hand-made summary: the Markdown evaluation (perplexity,
agreement, continuations, gates), the HTML models table, and the CLI's table, each showing
perplexity where a classifier's show accuracy."""

from __future__ import annotations

import io
from typing import Any

from kdflow.report.markdown import report_markdown
from kdflow.report.pages import _models_html


def lm_summary() -> dict[str, Any]:
    def model(spec: str, ppl: float, params: int) -> dict[str, Any]:
        return {"spec": spec, "perplexity": ppl, "token_accuracy": 0.4, "accuracy": 0.4,
                "params": params, "tokens_per_s": 100.0, "latency_ms": 10.0, "tokens": 1234,
                "file_bytes": 2048,
                "continuations": [{"prompt": "the cat", "continuation": " sat | on the mat"}]}

    return {
        "task": "causal-lm",
        "teachers": [model("hf-config:gpt2:n_layer=4", 12.5, 1000)],
        "ensemble": {"perplexity": 12.5, "token_accuracy": 0.5, "accuracy": 0.5,
                     "agreement": 0.75},
        "baseline": model("hf-config:gpt2:n_layer=2", 20.0, 300),
        "student": model("hf-config:gpt2:n_layer=2", 15.25, 300) | {"agreement": 0.75},
        "champion": None, "champion_seen": None,
        "gates": {"perplexity_retention": {"passed": True, "value": 1.22, "threshold": 1.5,
                                           "op": "<=", "detail": "student / ensemble"},
                  "beats_baseline": {"passed": True, "value": 0.27, "threshold": 0.0,
                                     "op": ">", "detail": "log perplexity"}},
        "passed": True,
    }


def test_the_markdown_page_shows_perplexity_continuations_and_gates() -> None:
    page = report_markdown(lm_summary())
    assert "# kdflow evaluation (causal LM)" in page
    assert "| student `hf-config:gpt2:n_layer=2` | 15.250 | 0.4000 | 0.7500 | 300 |" in page
    assert "1,234 counted tokens" in page
    assert "| the cat | sat \\| on the mat | sat \\| on the mat |" in page
    assert "| perplexity_retention | PASSED | 1.22 | <= 1.5 |" in page
    assert "accuracy | params | latency (ms)" not in page, "not the classifier's table"


def test_the_html_table_and_the_cli_table_show_perplexity() -> None:
    from rich.console import Console

    from pipelines.terminal import print_result

    html = _models_html(lm_summary())
    assert "perplexity" in html and "15.250" in html and "macro-F1" not in html
    out = io.StringIO()
    print_result(Console(file=out, width=200), lm_summary(), {}, None)
    text = out.getvalue()
    assert "perplexity" in text and "15.250" in text and "ms per token" in text
