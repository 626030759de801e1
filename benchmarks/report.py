"""What the run report costs: drawing each picture and writing the page, for one run.

    python -m benchmarks.report RUN_DIR [--repeat 3]

RUN_DIR is the output folder of a `kdflow run` (it holds summary.json). Each picture is drawn
`--repeat` times (the fastest counts) in this process, after one untimed draw that imports
matplotlib; then the whole page (`kdflow.report.pages.write_report`) is written to a temporary
folder. The table goes to stdout and to benchmarks/results/report.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "report.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    ns = parser.parse_args(argv)
    from kdflow.report.pages import load_summary, write_report
    from kdflow.report.plots import figures, png_bytes

    started = time.perf_counter()
    summary = load_summary(ns.run_dir)
    for fig in figures(summary).values():  # imports and font caches, untimed
        png_bytes(fig)
    first_s = time.perf_counter() - started
    rows = []
    for name in figures(summary):
        times, size = [], 0
        for _ in range(ns.repeat):
            t = time.perf_counter()
            size = len(png_bytes(figures(summary)[name]))
            times.append(time.perf_counter() - t)
        rows.append((name, min(times), size))
    with tempfile.TemporaryDirectory() as tmp:
        run_copy = Path(tmp)
        (run_copy / "summary.json").write_bytes((ns.run_dir / "summary.json").read_bytes())
        t = time.perf_counter()
        page = write_report(run_copy)
        page_s = time.perf_counter() - t
        page_kb = page.stat().st_size / 1024
    lines = [
        "# Run report: time and size",
        "",
        f"Command: `python -m benchmarks.report RUN_DIR --repeat {ns.repeat}` on the output "
        "of a default `kdflow run --seed 0`.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (load average "
        f"{os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}. "
        "Each picture: the fastest of the repeats, figure built and encoded as PNG.",
        "",
        "| picture | draw + encode s | PNG KiB |",
        "| --- | ---: | ---: |",
        *[f"| `{name}` | {s:.2f} | {size / 1024:.0f} |" for name, s, size in rows],
        "",
        f"Whole page (`write_report`: every picture drawn and saved, the HTML written): "
        f"{page_s:.2f} s, {page_kb:.0f} KiB, one file with every picture inlined. The first "
        f"draw in a fresh process, matplotlib's import and font cache included, took "
        f"{first_s:.2f} s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(text)


if __name__ == "__main__":
    main()
