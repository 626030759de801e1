"""The causal-LM task (`kdflow.distill.lm_task`, `kdflow.distill.lm_checks`) without Ray: a
teacher's top-k log-probabilities cached per token (keyed by temperature too) and read
back without running it, the ensemble's targets of two teachers, the task's loss against
the losses module, and the settings the driver refuses (another tokenizer, a top-k larger
than the vocabulary, classification-only options)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdflow.config import DistillConfig
from kdflow.data.sources import open_source
from kdflow.distill import cache as teacher_cache
from kdflow.distill import lm_losses
from kdflow.distill.driver import prepare_template
from kdflow.distill.lm_checks import lm_student_checks, lm_top_k
from kdflow.distill.lm_task import CausalLM, TokenTargets, token_metrics, unpack
from kdflow.distill.tasks import task_named
from kdflow.distill.teachers import teacher_outputs
from kdflow.errors import ConfigError
from kdflow.models.hf_lm import load_lm, save_lm
from kdflow.models.sources import encoder_of
from tests.unit.lm_helpers import corpus_dataset, tiny_gpt2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus_dataset(tmp_path_factory.mktemp("corpus") / "dataset", documents=60,
                          max_length=32)


@pytest.fixture(scope="module")
def teacher(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("teacher")
    prepare_template(tiny_gpt2(2), open_source(str(dataset)), str(folder), 0,
                     option="--teachers", vocab_size=300)
    return folder


def test_a_teacher_cache_holds_top_k_log_probabilities_per_token(
    dataset: Path, teacher: Path, tmp_path: Path
) -> None:
    source = open_source(str(dataset), cache_root=str(tmp_path))
    model, _ = load_lm(teacher)
    rows = source.rows("train", encoder_of(model))
    cfg = DistillConfig(student=tiny_gpt2(1), workers=0, temperature=2.0)
    task = task_named("causal-lm", cfg)
    (out,) = teacher_outputs(str(dataset), [str(teacher)], source.meta, cfg, str(tmp_path), 8,
                             task, rows)
    assert not out.cache_hit and out.cache is not None
    assert out.cache.endswith("-top8-T2.safetensors")
    entry = teacher_cache.CacheEntry.open(out.cache)
    assert entry is not None and entry.meta["temperature"] == 2.0
    values = entry.rows("train_values")
    ids = entry.rows("train_indices")
    assert values.shape == ids.shape == (rows, 32, 8)
    assert values.dtype == np.float16 and ids.dtype == np.int16
    x = torch.from_numpy(source.read("train", 0, 2, encoder_of(model)).x)
    with torch.no_grad():
        logprobs = torch.log_softmax(model.logits(x).float() / 2.0, -1)
    top = logprobs.topk(8, dim=-1)
    np.testing.assert_array_equal(ids[:2], top.indices.numpy())
    np.testing.assert_allclose(values[:2].astype(np.float32), top.values.numpy(), atol=2e-2)
    # The validation metrics travel in `val`: token accuracy and log perplexity.
    metrics = token_metrics(model, source.read("val", encoder=encoder_of(model)))
    np.testing.assert_allclose(out.val_logits, [metrics["token_accuracy"],
                                                np.log(metrics["perplexity"])], rtol=2e-3)

    (again,) = teacher_outputs(str(dataset), [str(teacher)], source.meta, cfg, str(tmp_path),
                               8, task, rows)
    assert again.cache_hit and again.cache == out.cache
    colder = DistillConfig(student=tiny_gpt2(1), workers=0, temperature=1.0)
    (other,) = teacher_outputs(str(dataset), [str(teacher)], source.meta, colder,
                               str(tmp_path), 8, task_named("causal-lm", colder), rows)
    assert not other.cache_hit, "another temperature is another entry"


def test_two_teachers_targets_are_their_mean_over_the_union_of_ids() -> None:
    ids = [torch.tensor([[[1, 2]]], dtype=torch.int16), torch.tensor([[[2, 3]]],
                                                                      dtype=torch.int16)]
    logprobs = [torch.log(torch.tensor([[[0.5, 0.3]]])).half(),
                torch.log(torch.tensor([[[0.6, 0.2]]])).half()]
    targets = TokenTargets(logprobs, ids, (0.5, 0.5))
    merged_ids, probs = unpack(targets.rows())
    got = {int(i): float(p) for i, p in zip(merged_ids[0, 0], probs[0, 0], strict=True)
           if p > 0}
    assert got == pytest.approx({1: 0.25, 2: 0.45, 3: 0.1}, abs=2e-3)


def test_the_tasks_loss_is_the_chunked_loss_against_the_packed_targets(teacher: Path) -> None:
    model, _ = load_lm(teacher)
    torch.manual_seed(0)
    x = torch.stack([torch.randint(3, 200, (2, 16)), torch.ones(2, 16, dtype=torch.long)], 1)
    y = torch.randint(3, 200, (2, 16))
    y[:, -1] = -100
    task = CausalLM("jsd", 0.3, 1.0)
    with torch.no_grad():
        parts = task.teacher_parts(model, x, 16)
    soft = task.targets([parts], task_ensemble()).rows()
    hidden = model(x)
    got = task.loss(hidden, y, soft, 1.0, 0.25, model)
    ids, probs = unpack(soft)
    want = lm_losses.chunked_lm_loss(hidden, model.lm_head, y, ids, probs, kind="jsd",
                                     alpha=0.25, temperature=1.0, beta=0.3)
    torch.testing.assert_close(got.total, want.total)
    assert got.soft is not None and float(got.soft) < 1e-3, "a model against itself"


def task_ensemble() -> object:
    from kdflow.distill.targets import Ensemble

    return Ensemble(0, 1.0, "mean_probs", (1.0,), 16, False)


def test_a_student_with_another_tokenizer_is_refused_naming_both_vocabularies(
    dataset: Path, teacher: Path, tmp_path: Path
) -> None:
    source = open_source(str(dataset))
    other = tmp_path / "other"  # a fresh BPE of another size: another vocabulary
    prepare_template(tiny_gpt2(1), source, str(other), 0, vocab_size=280)
    cfg = DistillConfig(student=tiny_gpt2(1))
    with pytest.raises(ConfigError, match=r"--student: teacher 0 .* and the student .* use "
                       r"different tokenizers \(\d+ vs \d+ tokens\)"):
        lm_student_checks(cfg, [str(teacher)], source.meta, str(other))


def test_a_top_k_larger_than_the_vocabulary_is_refused() -> None:
    with pytest.raises(ConfigError, match="--top-k: 500 logits per token, but the vocabulary "
                       "has 300 tokens"):
        lm_top_k(DistillConfig(top_k=500), 300)
    assert lm_top_k(DistillConfig(), 300) == 64
    assert lm_top_k(DistillConfig(), 40) == 40, "the default shrinks to a small vocabulary"


@pytest.mark.parametrize("option, settings", [
    ("--feature-weight", {"feature_weight": 1.0, "teacher_mode": "online"}),
    ("--generations", {"generations": 2}),
    ("--ensemble", {"ensemble": "mean_logits"}),
])
def test_classification_only_options_are_refused(
    option: str, settings: dict, dataset: Path, teacher: Path
) -> None:
    cfg = DistillConfig(student=tiny_gpt2(1), **settings)
    with pytest.raises(ConfigError, match=f"{option}: not available for --task causal-lm"):
        lm_student_checks(cfg, [str(teacher)], open_source(str(dataset)).meta, None)


def test_a_saved_student_keeps_the_teachers_tokenizer_fingerprint(
    teacher: Path, tmp_path: Path
) -> None:
    model, spec = load_lm(teacher)
    save_lm(model, tmp_path / "s", ["text"], {})
    again, saved = load_lm(tmp_path / "s")
    assert saved["tokenizer_fingerprint"] == spec["tokenizer_fingerprint"]
