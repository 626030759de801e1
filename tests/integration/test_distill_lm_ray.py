"""Causal-LM distillation under a real Ray Train run of two DDP workers on the CPU: each
rank reads its shard of the packed blocks and of the cached top-k targets; a killed
worker resumes from its checkpoint and ends where an undisturbed run ends; online
teachers train the same student as the cache (the cache's rounding applies to both);
two FSDP workers (PyTorch's FullyShardedDataParallel over gloo) train the student DDP
trains, and resume from their checkpoint as DDP does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from kdflow.config import DistillConfig, TeacherConfig
from tests.unit.lm_helpers import corpus_dataset, instruction_frame, tiny_gpt2

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, ray_tmp):
    from kdflow.distill.driver import train_teacher
    from kdflow.distill.run import distill

    root = tmp_path_factory.mktemp("lm-ray")
    dataset = corpus_dataset(root / "dataset", documents=80, max_length=32)
    teacher = root / "teacher"
    train_teacher(str(dataset), tiny_gpt2(2), TeacherConfig(teacher_epochs=2, batch_size=16),
                  0, teacher)
    cfg = DistillConfig(student=tiny_gpt2(1), student_epochs=2, student_batch_size=16,
                        workers=2, max_failures=1, kd_loss="jsd", temperature=1.0)
    result = distill(dataset, [teacher], cfg, root / "student", root / "baseline",
                     root / "work", "lm-undisturbed", seed=0)
    return root, dataset, teacher, cfg, result


def _weights(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def test_two_ddp_workers_distil_a_causal_lm(lm_run):
    root, _, _, _, result = lm_run
    for role in ("student", "baseline"):
        assert result[role]["epochs"] == 2
        assert (root / role / "tokenizer.json").is_file()
    history = result["student"]["history"]
    assert all(h["soft_loss"] > 0 for h in history)
    assert history[-1]["soft_loss"] < history[0]["soft_loss"]


@pytest.fixture(scope="module")
def fsdp_run(lm_run):
    from dataclasses import replace

    from kdflow.distill.run import distill

    root, dataset, teacher, cfg, _ = lm_run
    out = root / "fsdp"
    result = distill(dataset, [teacher], replace(cfg, parallel="fsdp"), out / "student",
                     out / "baseline", root / "work", "lm-fsdp", seed=0)
    return out, result


def test_two_fsdp_workers_train_the_student_ddp_trains(lm_run, fsdp_run):
    """Sharded or replicated, the same batches give the same updates: FSDP's
    reduce-scatter averages the gradients DDP's all-reduce does (up to float rounding);
    rank 0 validates its gathered full copy, and the checkpoint holds the whole model."""
    root, _, _, _, ddp = lm_run
    out, fsdp = fsdp_run
    for role in ("student", "baseline"):
        held = [h["worker_params"] for h in (ddp[role]["history"][0], fsdp[role]["history"][0])]
        assert held[0] == ddp[role]["params"] > 0  # DDP: every worker holds the whole model
        assert held[1] == pytest.approx(held[0] / 2, rel=0.01)  # FSDP: half of it, on rank 0
        a, b = _weights(root / role), _weights(out / role)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-4)
        for h_ddp, h_fsdp in zip(ddp[role]["history"], fsdp[role]["history"], strict=True):
            assert h_fsdp["val_accuracy"] == pytest.approx(h_ddp["val_accuracy"], abs=1e-3)
            assert h_fsdp["loss"] == pytest.approx(h_ddp["loss"], rel=1e-4)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_killed_worker_resumes_and_matches_the_undisturbed_run(parallel, lm_run, request,
                                                                   tmp_path):
    """Under FSDP too: the checkpoint of a sharded run (full weights by name, the optimizer
    by parameter index: the format DDP writes) is loaded back into the shards."""
    from dataclasses import replace

    from kdflow.distill.run import distill

    root, dataset, teacher, cfg, _ = lm_run
    reference = root if parallel == "ddp" else request.getfixturevalue("fsdp_run")[0]
    resumed = distill(dataset, [teacher], replace(cfg, parallel=parallel),
                      tmp_path / "student", tmp_path / "baseline", root / "work",
                      f"lm-{parallel}-killed", seed=0, fail_at_epoch=1)
    assert [h["epoch"] for h in resumed["student"]["history"]] == [1, 2]
    for role in ("student", "baseline"):
        a, b = _weights(reference / role), _weights(tmp_path / role)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5)


def test_online_teachers_train_the_student_the_cache_trains(lm_run, tmp_path):
    from dataclasses import replace

    from kdflow.distill.run import distill

    root, dataset, teacher, cfg, _ = lm_run
    online = replace(cfg, teacher_mode="online", workers=0)
    cached = replace(cfg, workers=0)
    for name, settings in (("online", online), ("cached", cached)):
        distill(dataset, [teacher], settings, tmp_path / name / "student",
                tmp_path / name / "baseline", root / "work", f"lm-{name}", seed=0)
    a, b = _weights(tmp_path / "online" / "student"), _weights(tmp_path / "cached" / "student")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-5)


def test_instruction_data_counts_completion_tokens_only(tmp_path):
    from kdflow.data.sources import open_source
    from kdflow.distill.driver import train_teacher
    from kdflow.distill.run import distill
    from kdflow.models.sources import encoder_of, load_saved

    dataset = corpus_dataset(tmp_path / "dataset", max_length=32, frame=instruction_frame(60))
    teacher = tmp_path / "teacher"
    train_teacher(str(dataset), tiny_gpt2(2), TeacherConfig(teacher_epochs=1, batch_size=16),
                  0, teacher)
    model, _ = load_saved(teacher)
    source = open_source(str(dataset))
    split = source.read("train", 0, 4, encoder_of(model))
    prompt_ids = set(model.tokenizer("Q: what did")["input_ids"])
    counted = split.y[split.y != -100]
    assert counted.size and not prompt_ids & set(counted.tolist()) - set(
        model.tokenizer(" the cat sat on the mat .")["input_ids"]), "prompt tokens never count"
    cfg = DistillConfig(student=tiny_gpt2(1), student_epochs=1, student_batch_size=16,
                        workers=0)
    result = distill(dataset, [teacher], cfg, tmp_path / "student", tmp_path / "baseline",
                     tmp_path / "work", "lm-instructions", seed=0)
    assert result["student"]["history"][0]["soft_loss"] > 0
