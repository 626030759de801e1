"""Where the loop runs (`kdflow.distill.runtime`): the CPU budget a pod's cgroup allows,
torch's threads within it, and each ensemble member's seed."""

from __future__ import annotations

import os

import pytest
import torch

from kdflow.distill import runtime
from kdflow.distill.runtime import cpu_budget, limit_threads, member_seed


def _cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2: a 2-CPU limit
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs round up
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one thread
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
    ],
)
def test_cpu_budget_follows_a_cgroup_cpu_limit(tmp_path, monkeypatch, files, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)))  # a 64-core node
    assert cpu_budget(_cgroup(tmp_path, files)) == expected


@pytest.mark.parametrize(
    "files",
    [
        {},  # no cgroup files at all
        {"cpu.max": "max 100000\n"},  # v2 without a limit
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},  # v1, no limit
        {"cpu.max": "garbage\n"},  # unreadable: the affinity stands
    ],
)
def test_cpu_budget_without_a_limit_is_the_affinity(tmp_path, monkeypatch, files):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    assert cpu_budget(_cgroup(tmp_path, files)) == 4


def test_limit_threads_lowers_torch_threads_to_the_budget_and_never_raises_them(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        monkeypatch.setattr(runtime, "cpu_budget", lambda: 2)
        assert limit_threads() == 2
        monkeypatch.setattr(runtime, "cpu_budget", lambda: 8)
        assert limit_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_member_zero_keeps_the_run_seed_and_the_others_get_their_own():
    seeds = [member_seed(7, i) for i in range(4)]
    assert seeds[0] == 7
    assert len(set(seeds)) == 4
    assert seeds == [member_seed(7, i) for i in range(4)], "the same run, the same seeds"
    assert member_seed(8, 1) != seeds[1]


@pytest.mark.parametrize(
    ("mode", "resources", "expected"),
    [
        ("auto", {"CPU": 8.0}, False),
        ("auto", {"CPU": 8.0, "GPU": 2.0}, True),
        # A cluster whose GPU workers scale from zero reports none yet: `on` asks anyway.
        ("on", {"CPU": 8.0}, True),
        ("off", {"CPU": 8.0, "GPU": 2.0}, False),
    ],
)
def test_ray_work_asks_for_gpus_as_use_gpu_says(mode, resources, expected) -> None:
    from kdflow.config import DistillConfig
    from kdflow.distill.runtime import wants_gpus
    from kdflow.distill.teachers import cache_actors

    assert wants_gpus(mode, resources) is expected
    actors, on_gpus = cache_actors(DistillConfig(use_gpu=mode), resources)
    assert on_gpus is expected
    # One actor per GPU (at least one, for GPUs still to start), else one per two CPUs.
    assert actors == (max(1, int(resources.get("GPU", 0))) if expected else 4)
