"""The run's HTML pages (`kdflow.report.pages`): one self-contained report page, checked in a
real headless Chromium, and the small pages each step shows in Kubeflow."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from kdflow.report import pages as report
from kdflow.report import plots
from tests.browser import CHROMIUM, open_page

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: `apt-get install -y chromium` (Debian) to check the "
           "report in a real browser",
)

IMG = re.compile(r'<img src="([^"]*)"')


@pytest.fixture
def written(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run folder with its report written (the shared one stays as it is)."""
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    return report.write_report(folder)


def test_report_is_one_page_with_every_picture_inlined(written: Path):
    page = written.read_text()
    sources = IMG.findall(page)
    assert len(sources) == len(plots.NAMES)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing to fetch: no script, no external stylesheet, no remote URL at all.
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "http://" not in page.split("MLflow run")[0] and "https://" not in page
    # The pictures also lie beside the page, one PNG each.
    assert sorted(p.stem for p in (written.parent / "plots").glob("*.png")) == sorted(
        plots.NAMES)


def test_report_shows_every_model_gate_and_the_verdict(written: Path, run_summary):
    page = written.read_text()
    for teacher in run_summary["teachers"]:
        assert report.esc(teacher["spec"]) in page
    assert f"{run_summary['student']['accuracy']:.4f}" in page
    assert f"{run_summary['ensemble']['accuracy']:.4f}" in page
    for gate in run_summary["gates"]:
        assert f"<td>{gate}</td>" in page
    assert page.count('<td class="pass">PASSED</td>') == len(run_summary["gates"])
    assert "every gate passed; not registered yet" in page
    assert run_summary["dataset"]["sha256"] in page


def test_report_marks_a_failed_gate_and_says_nothing_was_registered(run_summary):
    summary = json.loads(json.dumps(run_summary))
    summary["gates"]["compression"]["passed"] = False
    summary["passed"] = False
    page = report.render_html(summary, {})
    assert '<td class="fail">FAILED</td>' in page
    assert "not registered: gate(s) not passed: compression (failed)" in page
    assert "Nothing was registered in this run." in page


def test_report_names_the_registered_version_and_the_mlflow_run(run_summary):
    summary = dict(run_summary, registered={
        "name": "digits", "version": 3, "aliases": ["challenger", "champion"], "run_id": "r1",
        "tracking_uri": "http://mlflow:5000", "model_uri": "models:/digits/3"})
    page = report.render_html(summary, {}, mlflow_url="http://mlflow:5000/#/experiments/1/runs/r1")
    assert "registered digits version 3 (challenger, champion)" in page
    assert "http://mlflow:5000/#/experiments/1/runs/r1" in page


def test_report_of_a_folder_without_a_summary_says_it_is_not_a_run(tmp_path: Path):
    with pytest.raises(report.NotARunError, match="not a kdflow run folder"):
        report.write_report(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(report.NotARunError, match="not valid JSON"):
        report.write_report(tmp_path)
    (tmp_path / "summary.json").write_text('{"rows": 3}')
    with pytest.raises(report.NotARunError, match="not a kdflow run summary"):
        report.write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


@needs_chromium
def test_report_opens_in_chromium_without_console_errors(written: Path, tmp_path: Path):
    shot = written.parent / "report.png"
    seen = open_page(written, screenshot=shot)
    assert seen.console_errors == []
    assert seen.network_requests == []
    assert seen.title == "kdflow report"
    assert (seen.images, seen.broken_images) == (len(plots.NAMES), 0)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width == 1280 and height > 2000  # the whole page, pictures included


@needs_chromium
def test_step_pages_for_the_kubeflow_ui_open_without_errors(run_summary, tmp_path: Path):
    teacher = {"spec": "mlp:hidden=64", "val_accuracy": 0.9, "params": 4810, "epochs": 3,
               "history": run_summary["history"]["teachers"][0]}
    pages = {
        "teacher": report.teacher_page(teacher),
        "profile": report.profile_page(run_summary["dataset"]),
        "summary": report.summary_page(run_summary),
    }
    for name, html in pages.items():
        path = tmp_path / f"{name}.html"
        path.write_text(html)
        seen = open_page(path)
        assert (seen.console_errors, seen.network_requests, seen.broken_images) == (
            [], [], 0), name
        assert seen.images >= 1, name


# The checker must be able to fail: each page below breaks it in one way.
BROKEN = {
    "uncaught exception": "<script>null.boom();</script>",
    "console.error": "<script>console.error('something broke');</script>",
    "rejected promise": "<script>Promise.reject(new Error('late failure'));</script>",
    "missing picture": '<img src="missing.png" alt="x">',
}


@needs_chromium
@pytest.mark.parametrize("kind", list(BROKEN))
def test_chromium_check_catches_a_broken_page(kind: str, tmp_path: Path):
    path = tmp_path / "broken.html"
    path.write_text(report.page("broken", f"<p>hello</p>{BROKEN[kind]}"))
    seen = open_page(path)
    assert seen.console_errors, f"a page with a {kind} passed the check"


@needs_chromium
def test_chromium_check_catches_a_network_fetch(tmp_path: Path):
    path = tmp_path / "fetch.html"
    path.write_text(report.page("fetch", '<img src="https://example.com/pixel.png" alt="x">'))
    seen = open_page(path)
    assert seen.network_requests == ["https://example.com/pixel.png"]
