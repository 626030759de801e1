"""Causal LMs as kdflow models (`kdflow.models.hf_lm`): packed blocks read exactly as each
document alone, the three ways a causal LM comes in on a corpus (a fresh config with a BPE
of its own or the first teacher's, a student from the teacher's layers, a pretrained
folder), its folder, and the errors for models that are not causal LMs or lack positions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdflow.data.sources import open_source
from kdflow.distill.driver import prepare_template
from kdflow.errors import ConfigError
from kdflow.models.hf_lm import HfCausalLM, load_lm, packed_arguments, save_lm
from kdflow.models.sources import build, encoder_of, load_saved
from tests.unit.lm_helpers import corpus_dataset, tiny_gpt2, tiny_llama


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus_dataset(tmp_path_factory.mktemp("corpus") / "dataset", documents=60,
                          max_length=32)


@pytest.fixture(scope="module")
def teacher_dir(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("teacher")
    prepare_template(tiny_gpt2(4), open_source(str(dataset)), str(folder), 0,
                     option="--teachers", vocab_size=400)
    return folder


def _built(spec: str, dataset: Path, folder: Path, teacher: Path | None = None) -> HfCausalLM:
    source = open_source(str(dataset))
    prepare_template(spec, source, str(folder), 0, teacher=str(teacher) if teacher else None)
    model = build(spec, source.meta, template=folder)
    assert isinstance(model, HfCausalLM)
    return model.eval()


@pytest.mark.parametrize("spec", [tiny_gpt2(), tiny_llama()])
def test_a_packed_block_reads_each_document_as_if_it_were_alone(
    spec: str, dataset: Path, teacher_dir: Path, tmp_path: Path
) -> None:
    model = _built(spec, dataset, tmp_path / "m", teacher_dir)
    first, second = torch.randint(3, 300, (5,)), torch.randint(3, 300, (7,))
    ids = torch.cat([first, second, torch.zeros(4, dtype=torch.long)])
    segments = torch.tensor([1] * 5 + [2] * 7 + [0] * 4)
    x = torch.stack([ids, segments])[None]
    with torch.no_grad():
        packed = model.logits(x)[0]
        alone = [model.hf(input_ids=d[None]).logits[0] for d in (first, second)]
    torch.testing.assert_close(packed[:5], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[5:12], alone[1], atol=1e-5, rtol=1e-4)
    assert torch.isfinite(packed).all(), "padding rows attend to themselves: no NaN"


def test_positions_restart_at_each_document() -> None:
    x = torch.tensor([[[5, 6, 7, 8, 9, 0], [1, 1, 2, 2, 2, 0]]])
    args = packed_arguments(x)
    assert args["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0]]
    mask = args["attention_mask"][0, 0]
    assert mask[3].tolist() == [False, False, True, True, False, False]
    assert mask[5].tolist() == [False] * 5 + [True]


def test_a_fresh_teacher_trains_a_bpe_and_a_fresh_student_takes_it(
    dataset: Path, teacher_dir: Path, tmp_path: Path
) -> None:
    teacher, spec = load_saved(teacher_dir)
    assert spec["task"] == "causal-lm" and spec["inputs"] == "corpus"
    assert (teacher_dir / "tokenizer.json").is_file()
    assert spec["vocab_size"] == teacher.vocab_size == len(teacher.tokenizer) <= 400
    student = _built(tiny_gpt2(1), dataset, tmp_path / "s", teacher_dir)
    assert encoder_of(student).fingerprint == encoder_of(teacher).fingerprint
    assert student.hf.config.n_layer == 1


def test_a_student_from_the_teacher_takes_evenly_spaced_layers(
    dataset: Path, teacher_dir: Path, tmp_path: Path
) -> None:
    student = _built("hf-from-teacher:n_layer=2", dataset, tmp_path / "s", teacher_dir)
    teacher, _ = load_lm(teacher_dir)
    spec = json.loads((tmp_path / "s" / "spec.json").read_text())
    assert spec["from_teacher"]["layers"] == [0, 2]
    for j, i in enumerate((0, 2)):
        torch.testing.assert_close(student.hf.transformer.h[j].mlp.c_fc.weight,
                                   teacher.hf.transformer.h[i].mlp.c_fc.weight)
    torch.testing.assert_close(student.hf.transformer.wte.weight,
                               teacher.hf.transformer.wte.weight)


def test_save_and_load_give_the_same_model(dataset: Path, teacher_dir: Path,
                                           tmp_path: Path) -> None:
    teacher, _ = load_lm(teacher_dir)
    save_lm(teacher, tmp_path / "copy", ["text"], {"role": "teacher"})
    again, spec = load_lm(tmp_path / "copy")
    assert spec["role"] == "teacher" and spec["tokenizer_fingerprint"]
    x = torch.from_numpy(open_source(str(dataset)).read("val", 0, 2, encoder_of(teacher)).x)
    with torch.no_grad():
        torch.testing.assert_close(again.logits(x), teacher.logits(x))
    assert not list((tmp_path / "copy").glob("*.bin")), "safetensors only"


def test_a_pretrained_causal_lm_folder_comes_in_with_its_own_tokenizer(
    dataset: Path, teacher_dir: Path, tmp_path: Path
) -> None:
    teacher, _ = load_lm(teacher_dir)
    plain = tmp_path / "plain"
    teacher.hf.save_pretrained(plain)
    teacher.tokenizer.save_pretrained(plain)
    model = _built(f"hf:{plain}", dataset, tmp_path / "imported")
    assert encoder_of(model).fingerprint == encoder_of(teacher).fingerprint


def test_a_classifier_folder_is_not_a_causal_lm(dataset: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "bert"
    BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)
                                  ).save_pretrained(folder)
    with pytest.raises(ConfigError, match="is not a causal language model"):
        prepare_template(f"hf:{folder}", open_source(str(dataset)), str(tmp_path / "t"), 0,
                         option="--teachers")


def test_a_model_type_without_a_causal_head_is_refused(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vit is not a causal language model"):
        prepare_template("hf-config:vit:hidden_size=32", open_source(str(dataset)),
                         str(tmp_path / "t"), 0, option="--teachers")


def test_a_model_with_fewer_positions_than_max_length_is_refused(
    dataset: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="--max-length: 32 tokens per sequence, but .* has 16"):
        prepare_template(tiny_gpt2(positions=16), open_source(str(dataset)),
                         str(tmp_path / "t"), 0, option="--teachers")
