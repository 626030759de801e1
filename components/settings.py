"""settings: every pipeline parameter in, each settings group out as one JSON object.

It builds kdflow's settings dataclasses from the pipeline's parameters (components.parameters),
so a bad value stops the run here, before any data is read, with the dataclass's own message;
each later step turns its group back into the dataclass (`DistillConfig(**json.loads(...))`).
- A step, not a dict built in the pipeline: kfp.local 2.17 pastes pipeline parameters inside
  a dict input as text into the executor input (numbers arrive as strings, a list breaks it).
- JSON, not a dict output: kfp turns a dict parameter's integers into floats.
- Its function is written from the fields: kfp takes a component's inputs from the function's
  signature and runs the function's source, as `inspect.getsource` returns it.
"""

import linecache
import typing
from typing import Any, List, NamedTuple

from kfp import dsl

from components.parameters import GROUPS, hints, pipeline_type

FILENAME = "<kdflow settings component>"


def source() -> str:
    """The component's function: a typed input per settings field, a JSON output per group."""
    inputs = "".join(f"    {field}: {_spelled(pipeline_type(hint))},\n"
                     for cls in GROUPS.values() for field, hint in hints(cls).items())
    outputs = ", ".join(f"{group}=str" for group in GROUPS)
    return (f'def settings(\n{inputs}) -> NamedTuple("Outputs", {outputs}):\n'
            "    values = dict(locals())  # the inputs, before the import adds a name\n"
            "    from components.parameters import group_configs\n\n"
            "    return group_configs(values)\n")


def _spelled(annotation: Any) -> str:
    args = typing.get_args(annotation)
    return f"List[{args[0].__name__}]" if args else annotation.__name__


def make(image: str):
    text = source()
    # kfp serializes the function with inspect.getsource, which finds generated code here.
    linecache.cache[FILENAME] = (len(text), None, text.splitlines(True), FILENAME)
    namespace: dict[str, Any] = {}
    exec(compile(text, FILENAME, "exec", dont_inherit=True),
         {"List": List, "NamedTuple": NamedTuple}, namespace)
    return dsl.component(base_image=image, install_kfp_package=False)(namespace["settings"])
