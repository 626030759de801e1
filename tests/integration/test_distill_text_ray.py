"""Text distillation under a real Ray Train worker: a transformers student, initialised from
its teacher, in a worker process of a local Ray cluster; a killed worker resumes from its
checkpoint and ends where an undisturbed run ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from kdflow.config import DistillConfig, TeacherConfig
from tests.unit.text_helpers import text_dataset, tiny_bert

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, ray_tmp):
    from kdflow.distill.driver import train_teacher
    from kdflow.distill.run import distill

    root = tmp_path_factory.mktemp("text-ray")
    dataset = text_dataset(root, rows=160)
    teacher = root / "teacher"
    train_teacher(str(dataset), tiny_bert(2), TeacherConfig(teacher_epochs=2, batch_size=16),
                  0, teacher)
    cfg = DistillConfig(student="hf-from-teacher:num_hidden_layers=1", student_epochs=2,
                        student_batch_size=16, workers=1, max_failures=1)
    result = distill(dataset, [teacher], cfg, root / "student", root / "baseline",
                     root / "work", "text-undisturbed", seed=0)
    return root, dataset, teacher, cfg, result


def test_a_transformers_student_trains_in_a_ray_train_worker(text_run):
    root, _, _, _, result = text_run
    for role in ("student", "baseline"):
        assert result[role]["epochs"] == 2
        assert (root / role / "tokenizer.json").is_file()
        assert not list((root / role).glob("*.bin"))
    assert all(h["soft_loss"] > 0 for h in result["student"]["history"])


def test_a_killed_text_worker_resumes_and_matches_the_undisturbed_run(text_run, tmp_path):
    from kdflow.distill.run import distill

    root, dataset, teacher, cfg, _ = text_run
    resumed = distill(dataset, [teacher], cfg, tmp_path / "student", tmp_path / "baseline",
                      root / "work", "text-killed", seed=0, fail_at_epoch=1)
    assert [h["epoch"] for h in resumed["student"]["history"]] == [1, 2]
    for role in ("student", "baseline"):
        a = load_file(str(root / role / "model.safetensors"))
        b = load_file(str(Path(tmp_path / role) / "model.safetensors"))
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5)
