"""skip_registration: the branch taken when a gate failed; it says which, and registers nothing."""

from kfp import dsl


def skip_registration(
    summary: str,
    report: dsl.Output[dsl.Markdown],
    metrics: dsl.Output[dsl.Metrics],
) -> str:
    import json
    import logging
    from pathlib import Path

    from kdflow.report.pages import not_passed, skipped_markdown

    failed = not_passed(json.loads(summary))
    logging.getLogger("kdflow").warning("not registered: gate(s) not passed: %s",
                                        ", ".join(failed))
    Path(report.path).write_text(skipped_markdown(json.loads(summary)))
    metrics.log_metric("gates_failed", len(failed))
    return summary


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(skip_registration)
