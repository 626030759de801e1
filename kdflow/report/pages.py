"""One self-contained HTML page per run, and the small pages each step shows in Kubeflow.

Self-contained means the page needs nothing but itself: CSS inline, pictures as base64
`data:` URIs, no script, no font or stylesheet from the network. It opens from a laptop's
disk, from an MLflow artifact view and inside the Kubeflow UI's HTML viewer alike.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from kdflow.errors import ConfigError
from kdflow.evaluation.gates import PASSED, gate_status
from kdflow.report.seeds import SEEDS_NOTE, seeds_sentence, seeds_table
from kdflow.report.tables import esc, table_html, table_md

SUMMARY = "summary.json"
REPORT = "report.html"
PLOTS = "plots"

CAPTIONS = {
    "tradeoff": "Accuracy against CPU latency and parameters. The ensemble costs all its "
                "teachers together; the student should sit near the ensemble's accuracy at a "
                "fraction of its cost, above the baseline trained without the teachers.",
    "training_curves": "Per epoch: the hard loss (cross-entropy with the labels), the soft "
                       "loss (KL to the teachers' soft targets, student only) and the "
                       "validation accuracy of every teacher, the baseline and the student.",
    "reliability": "Reliability diagram on the test split: accuracy of the rows in each "
                   "confidence bin; on the dotted diagonal a model is perfectly calibrated. "
                   "Below, how many rows fall in each bin.",
    "confusion_matrix": "The student's test-split predictions: true class as rows, predicted "
                        "class as columns; colour is the share of the row.",
    "per_class_accuracy": "Accuracy of each class, student against the teacher ensemble.",
    "misclassified": "Test images the distilled student gets wrong, its most confident "
                     "mistakes first (up to 16): each with its true class, the student's top "
                     "class and the teacher ensemble's, with their probabilities; in red where "
                     "the ensemble is wrong too. Thumbnails at most 32 pixels a side, enlarged "
                     "without smoothing.",
    "data_profile": "Class balance of each prepared split, and each feature's range and "
                    "mean ± standard deviation in the data as read.",
}
TITLES = {
    "tradeoff": "Accuracy vs cost",
    "training_curves": "Training curves",
    "reliability": "Calibration",
    "confusion_matrix": "Confusion matrix",
    "per_class_accuracy": "Per-class accuracy",
    "misclassified": "Misclassified test images",
    "data_profile": "Data profile",
}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d1d1f; background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 8px; border-bottom: 1px solid #d8dbe0;
     padding-bottom: 4px; }
.sub { color: #5b616b; margin: 0 0 16px; }
.verdict { display: inline-block; padding: 6px 12px; border-radius: 6px; font-weight: 600; }
.ok { background: #dff3e4; color: #17632a; }
.bad { background: #fbe3e3; color: #8a1c1c; }
.warn { background: #fff4d6; color: #7a5600; }
table { border-collapse: collapse; background: white; margin: 8px 0; font-size: 0.9rem; }
th, td { border: 1px solid #d8dbe0; padding: 5px 10px; text-align: right; }
th { background: #eef0f3; }
td:first-child, th:first-child { text-align: left; }
tr.student td { font-weight: 600; }
table.kv td, table.gates td:last-child { text-align: left; }
td.pass { color: #17632a; font-weight: 600; }
td.fail { color: #8a1c1c; font-weight: 600; }
td.warn { color: #7a5600; font-weight: 600; }
figure { background: white; border: 1px solid #d8dbe0; margin: 12px 0; padding: 12px; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #5b616b; font-size: 0.88rem; margin-top: 6px; }
code { background: #eef0f3; padding: 1px 4px; border-radius: 3px; font-size: 0.85rem;
       word-break: break-all; }
ul.paths { font-size: 0.88rem; }
"""


class NotARunError(ConfigError):
    """The folder given is not a run's output folder."""


# ------------------------------------------------------------------------------ building


def image_tag(png: bytes, alt: str) -> str:
    """An <img> carrying the picture itself (a base64 data URI): nothing to fetch."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def figure_html(name: str, png: bytes) -> str:
    title = TITLES.get(name, name.replace("_", " "))
    return (f'<figure id="{esc(name)}">{image_tag(png, title)}'
            f"<figcaption><b>{esc(title)}.</b> {esc(CAPTIONS.get(name, ''))}</figcaption>"
            "</figure>")


def page(title: str, body: str) -> str:
    """A whole HTML document: inline CSS, no scripts, an empty icon (no favicon request)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def fmt_or_dash(value: Any, fmt: str) -> str:
    """`value` formatted with `fmt`, or an en dash when it is missing (None)."""
    return "–" if value is None else format(value, fmt)


# ------------------------------------------------------------------------------ sections


def model_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The models of a run as the report and the CLI table show them: teachers, ensemble,
    baseline, student, each with accuracy, params, latency and speed-up vs the ensemble.

    The ensemble's params and latency are those of all its teachers together.
    """
    teachers = summary.get("teachers") or []
    ensemble_latency = sum(t["latency_ms"] for t in teachers) or None
    rows = [{"role": "teacher", "name": f"teacher {t['spec']}", **t} for t in teachers]
    if summary.get("ensemble"):
        rows.append({"role": "ensemble", "name": f"teacher ensemble ({len(teachers)})",
                     **summary["ensemble"],
                     "params": sum(t["params"] for t in teachers) or None,
                     "latency_ms": ensemble_latency})
    for role, label in (("baseline", "baseline student (no KD)"),
                        ("student", "distilled student")):
        if summary.get(role):
            rows.append({"role": role, "name": f"{label} {summary[role]['spec']}",
                         **summary[role]})
    for row in rows:
        latency = row.get("latency_ms")
        row["speedup"] = ensemble_latency / latency if ensemble_latency and latency else None
    return rows


def image_latency_text(summary: dict[str, Any]) -> str:
    """A sentence of the student's and the ensemble's latency from the image files
    (decoding included), beside the table's model-alone latency; "" for other data."""
    timed = [(role, summary[role]) for role in ("student", "ensemble")
             if (summary.get(role) or {}).get("latency_image_ms") is not None]
    if not timed:
        return ""
    parts = [f"{role} {m['latency_image_ms']:.3f} ms at batch 1, "
             f"{fmt_or_dash(m.get('throughput_image_per_s'), ',.0f')} images/s in batches"
             for role, m in timed]
    return (" From the image files, decoding and resizing included (what a caller of the "
            "registered model waits for): " + "; ".join(parts) + ".")


def _models_html(summary: dict[str, Any]) -> str:
    rows = model_rows(summary)
    if summary.get("task") == "causal-lm":
        return table_html(
            ["model", "perplexity", "token accuracy", "params", "ms per generated token",
             "speed-up vs ensemble"],
            [[esc(r["name"]), fmt_or_dash(r.get("perplexity"), ",.3f"),
              fmt_or_dash(r.get("token_accuracy"), ".4f"), fmt_or_dash(r.get("params"), ","),
              fmt_or_dash(r.get("latency_ms"), ".3f"),
              fmt_or_dash(r.get("speedup"), ".1f") + "×" if r.get("speedup") else "–"]
             for r in rows],
            [r["role"] for r in rows])
    cells = [
        [esc(r["name"]), fmt_or_dash(r.get("accuracy"), ".4f"),
         fmt_or_dash(r.get("params"), ","), fmt_or_dash(r.get("latency_ms"), ".3f"),
         fmt_or_dash(r.get("speedup"), ".1f") + "×" if r.get("speedup") else "–",
         fmt_or_dash(r.get("macro_f1"), ".4f"), fmt_or_dash(r.get("ece"), ".4f")]
        for r in rows
    ]
    return table_html(
        ["model", "accuracy", "params", "latency (ms)", "speed-up vs ensemble", "macro-F1",
         "ECE"],
        cells, [r["role"] for r in rows])


def _gates_html(summary: dict[str, Any]) -> str:
    rows = [
        [esc(name), gate_status(g).upper(),
         "–" if g.get("value") is None else esc(g["value"]),
         esc(f"{g['op']} {g['threshold']}"), esc(g.get("detail", ""))]
        for name, g in (summary.get("gates") or {}).items()
    ]
    body = table_html(["gate", "result", "value", "threshold", "detail"], rows,
                      css_class="gates")
    # Colour the result cells: the second cell of each row.
    return body.replace("<td>PASSED</td>", '<td class="pass">PASSED</td>').replace(
        "<td>FAILED</td>", '<td class="fail">FAILED</td>').replace(
        "<td>INCONCLUSIVE</td>", '<td class="warn">INCONCLUSIVE</td>')


def _verdict_html(summary: dict[str, Any]) -> str:
    registered = summary.get("registered")
    if registered:
        aliases = ", ".join(registered.get("aliases") or [])
        return (f'<span class="verdict ok">registered {esc(registered["name"])} version '
                f'{esc(registered["version"])} ({esc(aliases)})</span>')
    if summary.get("passed"):
        return '<span class="verdict warn">every gate passed; not registered yet</span>'
    return (f'<span class="verdict bad">not registered: gate(s) not passed: '
            f'{esc(", ".join(not_passed(summary)))}</span>')


def _dataset_html(summary: dict[str, Any]) -> str:
    d = summary.get("dataset") or {}
    validation = d.get("validation") or {}
    config = (summary.get("config") or {}).get("data") or {}
    items = [
        ("source", config.get("data") or "–"),
        ("SHA-256", d.get("sha256", "–")),
        ("rows", ", ".join(f"{k} {v:,}" for k, v in (d.get("splits") or {}).items())),
        ("classes", len(d.get("classes") or [])),
        ("features", d.get("features", "–")),
        ("validation", "passed" if d.get("passed", True) else "FAILED (let through)"),
    ]
    rows = [[esc(k), f"<code>{esc(v)}</code>" if k == "SHA-256" else esc(v)] for k, v in items]
    out = table_html(["", ""], rows, css_class="kv")
    findings = [("failure", f) for f in validation.get("failures") or []] + [
        ("warning", f) for f in validation.get("warnings") or []]
    if findings:
        out += "<ul>" + "".join(
            f"<li><b>{esc(kind)}</b>: {esc(_finding_text(f))}</li>" for kind, f in findings
        ) + "</ul>"
    return out


def _finding_text(finding: Any) -> str:
    if isinstance(finding, dict):
        parts = [finding.get("split"), finding.get("column"), finding.get("message")]
        return " · ".join(str(p) for p in parts if p)
    return str(finding)


def _registry_html(summary: dict[str, Any], mlflow_url: str | None) -> str:
    registered = summary.get("registered")
    if not registered:
        return "<p>Nothing was registered in this run.</p>"
    items = [
        ("model", f"{registered['name']} version {registered['version']}"),
        ("aliases", ", ".join(registered.get("aliases") or [])),
        ("model URI", registered.get("model_uri", "–")),
        ("ONNX model", registered.get("onnx_model_uri") or "–"),
        ("promotion", registered.get("promotion_detail", "–")),
        ("MLflow run", mlflow_url or registered.get("run_id", "–")),
        ("tracking URI", registered.get("tracking_uri", "–")),
    ]
    return table_html(["", ""], [[esc(k), f"<code>{esc(v)}</code>"] for k, v in items],
                      css_class="kv")


def render_html(summary: dict[str, Any], pictures: dict[str, bytes],
                artifacts: dict[str, str] | None = None, mlflow_url: str | None = None) -> str:
    """The run's report: verdict, models, gates, data, registry entry, every picture, and
    where each artifact lies. `pictures` maps a picture's name (`kdflow.report.plots.ORDER`)
    to PNG."""
    student = summary.get("student") or {}
    body = [
        "<h1>kdflow distillation report</h1>",
        f'<p class="sub">student <code>{esc(student.get("spec", "?"))}</code> from '
        f'{len(summary.get("teachers") or [])} teacher(s)'
        + (f', run took {summary["duration_s"]:.0f} s' if summary.get("duration_s") else "")
        + "</p>",
        _verdict_html(summary),
        "<h2>Models (test split)</h2>",
        _models_html(summary),
        "<p class=\"sub\">Latency: median batch-1 prediction on one CPU thread. The ensemble "
        "runs every teacher." + esc(image_latency_text(summary)) + "</p>",
        "<h2>Gates</h2>",
        _gates_html(summary),
        *_seeds_html(summary),
        *(["<h2>Cost and savings</h2>", _cost_html(summary)] if summary.get("cost") else []),
        "<h2>Registry</h2>",
        _registry_html(summary, mlflow_url),
        "<h2>Data</h2>",
        _dataset_html(summary),
    ]
    from kdflow.report.plots import ORDER

    names = [n for n in ORDER if n in pictures] + [n for n in pictures if n not in ORDER]
    if names:
        body.append("<h2>Pictures</h2>")
        body += [figure_html(name, pictures[name]) for name in names]
    if artifacts:
        body.append("<h2>Artifacts</h2><ul class=\"paths\">" + "".join(
            f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in artifacts.items()
        ) + "</ul>")
    return page("kdflow report", "\n".join(body))


# ---------------------------------------------------------------------------- a run folder


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The summary of the run in `run_dir`; NotARunError when there is none."""
    how = "give the --output folder of a `kdflow run` (it holds summary.json)"
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir}: no such folder; {how}")
    path = run_dir / SUMMARY
    if not path.is_file():
        raise NotARunError(f"{run_dir}: not a kdflow run folder (no {SUMMARY}); {how}")
    try:
        summary = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotARunError(f"{path}: not valid JSON ({exc}); {how}") from exc
    if not isinstance(summary, dict) or not {"student", "gates"} <= set(summary):
        raise NotARunError(f"{path}: not a kdflow run summary (no student or gates); {how}")
    return summary


def write_report(run_dir: Path, output: Path | None = None,
                 artifacts: dict[str, str] | None = None,
                 mlflow_url: str | None = None) -> Path:
    """Draw the run's pictures into `run_dir/plots/` and write its report page (default
    `run_dir/report.html`); returns the page's path."""
    from kdflow.report.plots import render_all

    summary = load_summary(run_dir)
    written = render_all(summary, run_dir / PLOTS)
    pictures = {name: path.read_bytes() for name, path in written.items()}
    output = output or run_dir / REPORT
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_html(summary, pictures, artifacts, mlflow_url), encoding="utf-8")
    return output


# -------------------------------------------------------------------- pages for the KFP UI


def history_page(title: str, history: dict[str, Any], rows: list[list[str]],
                 headers: list[str]) -> str:
    """A step's page: its numbers as a table, and its training curves."""
    from kdflow.report.plots import png_bytes, training_curves

    body = [f"<h1>{esc(title)}</h1>", table_html(headers, [[esc(c) for c in r] for r in rows])]
    if any(history.get(k) for k in ("teachers", "student", "baseline")):
        body.append(figure_html("training_curves", png_bytes(training_curves(history))))
    return page(title, "\n".join(body))


def teacher_page(result: dict[str, Any]) -> str:
    """The train_teacher step's page: the teacher's numbers and its curves."""
    return history_page(
        f"teacher {result['spec']}",
        {"teachers": [result.get("history") or []]},
        [[result["spec"], f"{result['val_accuracy']:.4f}", f"{result['params']:,}",
          str(result["epochs"])]],
        ["teacher", "val accuracy", "params", "epochs"],
    )


def distill_page(result: dict[str, Any]) -> str:
    """The distill step's page: student and baseline on validation, and their curves."""
    rows = [[role, f"{result[role]['val_accuracy']:.4f}", f"{result[role]['params']:,}",
             str(result[role]['epochs'])] for role in ("student", "baseline")]
    rows += [[f"teacher {t['spec']}", f"{t['val_accuracy']:.4f}", "", f"weight {t['weight']:.3f}"]
             for t in result.get("teachers") or []]
    return history_page(
        "distillation",
        {"student": result["student"].get("history") or [],
         "baseline": result["baseline"].get("history") or []},
        rows, ["model", "val accuracy", "params", "epochs"],
    )


def profile_page(info: dict[str, Any]) -> str:
    """The validate step's page: the data's verdict, its splits and its profile picture."""
    from kdflow.report.plots import data_profile, png_bytes

    rows = [[split, f"{n:,}"] for split, n in (info.get("splits") or {}).items()]
    body = [
        "<h1>data profile</h1>",
        f'<span class="verdict {"ok" if info.get("passed") else "bad"}">data validation '
        f'{"passed" if info.get("passed") else "FAILED"}</span>',
        table_html(["split", "rows"], [[esc(c) for c in r] for r in rows]),
        figure_html("data_profile", png_bytes(data_profile(info))),
    ]
    return page("data profile", "\n".join(body))


def summary_page(summary: dict[str, Any]) -> str:
    """The evaluate step's page: the run's report with every picture."""
    from kdflow.report.plots import figures, png_bytes

    return render_html(summary, {n: png_bytes(f) for n, f in figures(summary).items()})


# ---------------------------------------------------------------------------------- MLflow


def log_to_mlflow(tracking_uri: str, run_id: str, run_dir: Path) -> bool:
    """Put the run folder's pictures and report page on MLflow run `run_id` (under
    `report/`). Best effort: a tracking server that cannot be reached costs a warning."""
    import logging

    log = logging.getLogger(__name__)
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        if (run_dir / REPORT).exists():
            client.log_artifact(run_id, str(run_dir / REPORT), "report")
        if (run_dir / PLOTS).is_dir():
            client.log_artifacts(run_id, str(run_dir / PLOTS), "report/plots")
    except Exception as exc:  # the files stay in the run folder either way
        log.warning("could not put the report on MLflow run %s: %s", run_id,
                    str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
        return False
    return True


def log_summary_to_mlflow(tracking_uri: str, run_id: str, summary: dict[str, Any]) -> bool:
    """Draw `summary`'s pictures and report page and put them on MLflow run `run_id`."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kdflow-report-") as tmp:
        folder = Path(tmp)
        (folder / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
        write_report(folder)
        return log_to_mlflow(tracking_uri, run_id, folder)


def mlflow_run_url(tracking_uri: str, run_id: str) -> str:
    """Where a person sees MLflow run `run_id`: its page on the tracking server, or for a
    local store the page `mlflow ui` serves (with the command to start it)."""
    experiment = "0"
    try:
        from mlflow import MlflowClient

        experiment = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # the URL is still useful without the experiment's id
        pass
    path = f"#/experiments/{experiment}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{path}"
    return f"http://127.0.0.1:5000/{path} (after: mlflow ui --backend-store-uri {tracking_uri})"


# ------------------------------------------------------------------ the registry's verdict


COST_PARTS = {"teachers": "teachers", "cache_fill": "teacher cache", "distillation":
              "distillation", "evaluation": "evaluation", "total": "total"}
RUNTIMES = {"pytorch": "PyTorch, batch 1", "onnx": "ONNX Runtime, batch 1",
            "pytorch_batch": "PyTorch, per row at the throughput batch",
            "onnx_batch": "ONNX Runtime, per row at the throughput batch"}


def cost_tables(summary: dict[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    """The cost ledger as two tables (headers, rows of plain text): what each part used,
    and per runtime the saving per request and the break-even; [] without a ledger."""
    cost = summary.get("cost")
    if not cost:
        return []
    used = [[label, f"{cost[k]['wall_s']:,.1f}", f"{cost[k]['cpu_s']:,.1f}",
             f"{cost[k]['core_s']:,.1f}", f"{cost[k]['gpu_s']:,.1f}"]
            for k, label in COST_PARTS.items() if k in cost]
    inference = cost["inference"]
    unit = inference.get("unit", "row")
    saved = []
    batch = summary.get("latency_batch")
    for key, label in RUNTIMES.items():
        if batch and key.endswith("_batch"):
            label = label.replace("the throughput batch", f"batch {batch}")
        if key not in inference["saving_ms"] or inference["saving_ms"][key] is None:
            continue
        even = cost["break_even_requests"].get(key)
        both = cost["break_even_requests_with_teachers"].get(key)
        saved.append([label, f"{inference['ensemble_ms'][key]:.4f}",
                      f"{inference['student_ms'][key]:.4f}", f"{inference['saving_ms'][key]:.4f}",
                      "never" if even is None else f"{even:,}",
                      "never" if both is None else f"{both:,}"])
    return [(["part", "wall s", "CPU s", "core-s held", "GPU-s held"], used),
            (["runtime", f"ensemble ms / {unit}", f"student ms / {unit}", "saved ms",
              "break-even requests", "with the teachers' training"], saved)]


def cost_lines(summary: dict[str, Any]) -> list[str]:
    """The ledger's tables in Markdown ([] without a ledger)."""
    lines: list[str] = []
    for headers, rows in cost_tables(summary):
        lines += ["", *table_md(headers, rows)]
    return (["", "## Cost and savings", *lines, "",
             "Core- and GPU-seconds are the resources each step held for its wall time; the "
             "break-even is the requests whose CPU saving pays back the cache, distillation "
             "and evaluation (and the teachers' training in the last column)."]
            if lines else [])


def _seeds_html(summary: dict[str, Any]) -> list[str]:
    table = seeds_table(summary)
    if table is None:
        return []
    headers, rows = table
    return ["<h2>Seeds</h2>", f"<p>{esc(seeds_sentence(summary) or '')}</p>",
            table_html(headers, [[esc(c) for c in row] for row in rows]),
            f'<p class="sub">{esc(SEEDS_NOTE)}</p>']


def _cost_html(summary: dict[str, Any]) -> str:
    return "".join(table_html(h, [[esc(c) for c in row] for row in rows])
                   for h, rows in cost_tables(summary))


def not_passed(summary: dict[str, Any]) -> list[str]:
    """The gates that did not pass, each with how (`beats_baseline (inconclusive)`)."""
    return [f"{name} ({gate_status(g)})" for name, g in (summary.get("gates") or {}).items()
            if gate_status(g) != PASSED]


def gate_lines(summary: dict[str, Any], detail: bool = False) -> list[str]:
    """The gates as a Markdown table: result (PASSED, FAILED, INCONCLUSIVE), value,
    threshold, and with `detail` what each concluded and on what evidence."""
    head = ["gate", "result", "value", "threshold", *(["detail"] if detail else [])]
    return table_md(head, [
        [name, gate_status(g).upper(), "–" if g.get("value") is None else g["value"],
         f"{g['op']} {g['threshold']}", *([g.get("detail", "")] if detail else [])]
        for name, g in (summary.get("gates") or {}).items()])


def registration_markdown(summary: dict[str, Any]) -> str:
    """The register step's page: which version was registered, its aliases and URIs."""
    r = summary["registered"]
    lines = [
        f"# Registered {r['name']} version {r['version']}",
        "",
        f"- aliases: {', '.join(r.get('aliases') or [])}",
        f"- promotion: {r.get('promotion_detail', '–')}",
        f"- model: `{r.get('model_uri', '–')}`; ONNX: `{r.get('onnx_model_uri') or '–'}`",
        f"- MLflow run `{r.get('run_id', '–')}` on `{r.get('tracking_uri', '–')}` (with the "
        "report and its pictures under `report/`)",
        "",
        *gate_lines(summary),
        "",
    ]
    return "\n".join(lines)


def skipped_markdown(summary: dict[str, Any]) -> str:
    """The else branch's page: the gates that did not pass, so nothing was registered."""
    failed = not_passed(summary)
    return "\n".join([
        "# Not registered",
        "",
        f"Gate(s) not passed: {', '.join(failed) or 'none'}. The student stays out of the "
        "registry; "
        "the evaluate step's report shows every number.",
        "",
        *gate_lines(summary),
        "",
    ])
