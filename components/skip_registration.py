"""skip_registration: the branch taken when a gate failed; it says which, and registers nothing."""

from kfp import dsl


def skip_registration(summary: str) -> str:
    import json
    import logging

    failed = [name for name, g in json.loads(summary)["gates"].items() if not g["passed"]]
    logging.getLogger("kdflow").warning("not registered: gate(s) failed: %s", ", ".join(failed))
    return summary


def make(image: str):
    return dsl.component(base_image=image, install_kfp_package=False)(skip_registration)
