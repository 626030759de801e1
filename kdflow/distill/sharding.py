"""`--parallel fsdp`: the student and its baseline sharded across the Ray Train workers with
PyTorch's FullyShardedDataParallel, rather than replicated by DDP.

Each worker then holds 1/N of every weight, gradient and Adam moment at rest (DDP: all of
them), and gathers one unit's weights at a time around its forward and backward. Units
are the model's transformer blocks (a transformers model's `_no_split_modules`), the rest
(embeddings, head, the zoo's small models) one root unit. What FSDP needs from the loop:

- the loss inside the wrapped forward (`kdflow.distill.step.StepLoss`): a causal LM's
  chunked loss applies the head, which FSDP gathers only there;
- the optimizer built over the wrapped parameters (`use_orig_params=True`: the same names
  and shapes the unwrapped model has, each rank holding its slice);
- every rank in each gather of the whole state (`gather`): the epoch's checkpoint, and
  rank 0's full copy of the model, which it validates (FSDP's units cannot run outside
  their wrapper). The checkpoint is the one DDP writes: weights by name, the optimizer's
  state by parameter index.

On GPUs the wrapping is Ray Train's `prepare_model(parallel_strategy="fsdp")`; Ray refuses
FSDP without CUDA, while PyTorch's FSDP runs on CPU over gloo, which is how the tests run
it here: the same FullyShardedDataParallel with the same arguments, built directly.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdflow.distill.hints import HintedStudent
from kdflow.distill.step import Role, StepLoss, optimizer_for
from kdflow.distill.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class Sharded:
    """What the loop keeps of a sharded role, beside its FSDP-wrapped `StepLoss`."""

    names: list[str]
    """The wrapped module's parameter names, in the optimizer's order (its indices)."""
    hinted: bool
    """The model is a `HintedStudent`: its weights are the student's and projections'."""
    copy: nn.Module
    """Rank 0's full, unwrapped copy of the classifier, reloaded each epoch and validated
    (other ranks: the classifier object, never run)."""
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    """The classifier's full weights last gathered (rank 0)."""
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    """The hint projections' full weights last gathered (rank 0)."""
    optimizer: dict[str, Any] = field(default_factory=dict)
    """The optimizer's full state last gathered, keyed by parameter index (rank 0)."""


def layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes FSDP wraps as units: a transformers model's `_no_split_modules` (its
    decoder or encoder blocks), found in `model`; none for other models."""
    wanted: set[str] = set()
    for module in model.modules():
        wanted.update(getattr(module, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules() if type(m).__name__ in wanted}


def fsdp_arguments(model: nn.Module, device: torch.device) -> dict[str, Any]:
    """FullyShardedDataParallel's arguments for `model` on `device`."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    units = layer_classes(model)
    arguments: dict[str, Any] = {
        "use_orig_params": True,  # the optimizer and state dicts see the model's own names
        "auto_wrap_policy": ModuleWrapPolicy(units) if units else None,
    }
    if device.type == "cuda":  # sync_module_states broadcasts over NCCL only
        arguments |= {"device_id": device, "sync_module_states": True}
    else:
        arguments["device_id"] = torch.device("cpu")
    return arguments


def shard(role: Role, task: Task, temperature: float, device: torch.device, rank: int) -> None:
    """Wrap `role` for FSDP in place: its model becomes FSDP(StepLoss), its optimizer and
    schedule are rebuilt over the sharded parameters, and rank 0 keeps a full copy of the
    classifier to validate."""
    import ray.train.torch
    from torch.distributed.fsdp import FullyShardedDataParallel

    step = StepLoss(role, task, temperature)
    names = [name for name, _ in step.named_parameters()]
    full = copy.deepcopy(role.classifier).to(device) if rank == 0 else role.classifier
    arguments = fsdp_arguments(step, device)
    if device.type == "cuda":
        role.model = ray.train.torch.prepare_model(
            step, parallel_strategy="fsdp", parallel_strategy_kwargs=arguments
        )
    else:  # Ray's prepare_model refuses FSDP without CUDA; torch's runs over gloo
        role.model = FullyShardedDataParallel(step.to(device), **arguments)
    # The same optimizer and schedule, over the parameters FSDP now holds.
    role.optimizer, role.scheduler = optimizer_for(
        role.model, role.optimizer.defaults["lr"], role.scheduler.T_max
    )
    role.sharded = Sharded(names, isinstance(step.net, HintedStudent), full)
    if rank == 0:
        units = sorted(c.__name__ for c in layer_classes(step)) or ["the whole model"]
        log.info("%s sharded with FSDP, units: %s", role.name, ", ".join(units))


def _options(device: torch.device) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Offloading to CPU gathers to rank 0 alone; on CPU tensors it segfaulted in torch
    # 2.13 (a GPT-2, whose head is tied to its embedding), so there every rank gathers.
    return StateDictOptions(full_state_dict=True, cpu_offload=device.type == "cuda")


def gather(role: Role, device: torch.device, rank: int) -> None:
    """The role's full weights and optimizer state, onto rank 0 (`role.sharded`), and
    rank 0's copy reloaded with them. Every rank must call it (FSDP all-gathers)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    sharded: Sharded = role.sharded
    gathered, optimizer = get_state_dict(role.model, role.optimizer, options=_options(device))
    if rank != 0:
        return
    weights: dict[str, torch.Tensor] = {
        k.removeprefix("net."): v for k, v in gathered.items()  # type: ignore[misc]
    }
    if sharded.hinted:
        sharded.aux = {k.removeprefix("projections."): v for k, v in weights.items()
                       if k.startswith("projections.")}
        weights = {k.removeprefix("student."): v for k, v in weights.items()
                   if k.startswith("student.")}
    sharded.weights = weights
    sharded.copy.load_state_dict(weights)
    sharded.optimizer = by_index(optimizer, sharded.names)


def by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A full optimizer state keyed by parameter name (torch.distributed.checkpoint's) as
    `optimizer.state_dict()` keys it: by the parameter's index in `names`."""
    index = {name: i for i, name in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """`by_index`'s inverse."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[int(i)]: v for i, v in state["state"].items()},
            "param_groups": groups}


def load_optimizer(role: Role, state: dict[str, Any]) -> None:
    """A checkpoint's full optimizer state (keyed by index) into the sharded optimizer:
    each rank keeps its slice. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        role.model, role.optimizer, by_name(state, role.sharded.names),
        options=StateDictOptions(full_state_dict=True),
    )
