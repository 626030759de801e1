"""The Hugging Face sources on image data, with real transformers image classifiers built
from tiny configs (ResNet, ViT, MobileNetV2, ConvNeXt): fresh models for the data's
channels, size and classes, normalised with the training pixels' statistics; saving and
loading; pretrained folders with their processor's size and normalisation; gray images
into an RGB model and back; the hint taps; ONNX export with uint8 pixels; students from a
ViT or ResNet teacher; and the specs that are refused."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from kdflow.config import DistillConfig
from kdflow.data.images import write_prepared_images
from kdflow.data.sources import DataSource, open_source
from kdflow.distill.hints import make_plan
from kdflow.errors import ConfigError
from kdflow.models.hf_source import FromConfig, FromTeacher, Pretrained, parse_overrides
from kdflow.models.hf_vision import HfImageClassifier, load_hf_image, patch_default
from kdflow.models.image_processing import channel_stats, processor_preprocessing
from kdflow.models.sources import PrepareContext, build, load_saved, source_for
from tests.unit.image_helpers import digit_images
from tests.unit.text_helpers import text_dataset, tiny_bert

RESNET = "hf-config:resnet:embedding_size=32,hidden_sizes=32-64,depths=1-1"
VIT = "hf-config:vit:hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
TINY = {
    "resnet": RESNET,
    "vit": VIT + ",patch_size=4",
    "mobilenet_v2": "hf-config:mobilenet_v2:depth_multiplier=0.25,finegrained_output=false",
    "convnext": "hf-config:convnext:hidden_sizes=16-32,depths=1-1,num_stages=2",
}
CLASSES = ["0", "1", "2"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TINT = np.array([[1.0, 0.3, 0.1], [0.2, 1.0, 0.4], [0.3, 0.2, 1.0]])
"""Each class's colour on RGB data, so the three channels differ."""


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_data(folder: Path, shape: list[int]) -> DataSource:
    """A prepared dataset of digits (3 classes, 10 each: train 16, val 6, test 8) decoded
    at `shape`: gray, or tinted by class in colour."""
    items = digit_images(10, 3)
    order = np.random.default_rng(0).permutation(len(items))
    parts = {"train": order[:16], "val": order[16:22], "test": order[22:]}

    def encoded(i: int) -> bytes:
        label, pixels = items[i]
        if shape[0] == 1:
            return _png(pixels)
        return _png((pixels[..., None] * TINT[label]).round().astype(np.uint8))

    splits = {
        name: ([encoded(i) for i in rows], [f"{i}.png" for i in rows],
               [str(items[i][0]) for i in rows])
        for name, rows in parts.items()
    }
    write_prepared_images(folder, splits, CLASSES, shape, "label", "0" * 64, "unit")
    return open_source(str(folder))


@pytest.fixture(scope="module")
def gray(tmp_path_factory: pytest.TempPathFactory) -> DataSource:
    return image_data(tmp_path_factory.mktemp("gray") / "data", [1, 28, 28])


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> DataSource:
    return image_data(tmp_path_factory.mktemp("rgb") / "data", [3, 32, 32])


def prepared(spec: str, data: DataSource, folder: Path, **context: Any) -> Path:
    source = source_for(spec)
    source.check(spec, context.get("option", "--student"))
    assert source.prepare(spec, PrepareContext(data=data, **context), folder) is True
    return folder


def built(spec: str, data: DataSource, template: Path, stats: Any = None) -> HfImageClassifier:
    model = build(spec, data.meta, stats, template=template)
    assert isinstance(model, HfImageClassifier)
    return model


def pixels(data: DataSource, split: str = "test") -> torch.Tensor:
    return torch.from_numpy(data.read(split).x)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(x)
    return out


# ------------------------------------------------------------------------------ hf-config:


@pytest.mark.parametrize("shape", [[1, 28, 28], [3, 32, 32]], ids=["gray28", "rgb32"])
@pytest.mark.parametrize("arch", list(TINY))
def test_a_fresh_model_reads_the_datas_pixels_and_loads_back_with_identical_logits(
    arch: str, shape: list[int], gray: DataSource, rgb: DataSource, tmp_path: Path
) -> None:
    data = gray if shape[0] == 1 else rgb
    spec = TINY[arch]
    template = prepared(spec, data, tmp_path / "template", seed=1)
    config = json.loads((template / "config.json").read_text())
    assert config["num_channels"] == shape[0]
    assert config["id2label"] == {"0": "0", "1": "1", "2": "2"}
    if "image_size" in config:
        assert config["image_size"] == shape[1]
    model = built(spec, data, template, data.input_stats())
    assert model.training
    x = pixels(data)
    assert x.dtype == torch.uint8
    out = logits(model, x)
    assert out.shape == (len(x), 3)
    torch.testing.assert_close(logits(model, x.float()), out)
    # Normalised with the training pixels' own per-channel mean and std (0-1 scale).
    train = data.read("train").x.astype(np.float64) / 255
    per_channel = train.transpose(1, 0, 2, 3).reshape(shape[0], -1)
    torch.testing.assert_close(model.mean, torch.tensor(per_channel.mean(1), dtype=torch.float32))
    torch.testing.assert_close(model.std, torch.tensor(per_channel.std(1), dtype=torch.float32),
                               rtol=0.05, atol=0)
    assert model.image_size.tolist() == shape[1:]
    head = model.head()
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():  # not the template's weights any more
        head.weight.add_(0.5)
    before = logits(model, x)
    source = source_for(spec)
    folder = source.save(model, tmp_path / "saved", data.meta, {"role": "student"})
    saved = json.loads((folder / "spec.json").read_text())
    assert (saved["kind"], saved["task"], saved["role"]) == ("hf", "image", "student")
    assert saved["input_shape"] == shape and saved["n_features"] == int(np.prod(shape))
    assert (saved["inputs"], saved["channels"], saved["image_size"]) == ("image", shape[0],
                                                                         shape[1:])
    loaded, _ = load_saved(folder)
    assert isinstance(loaded, HfImageClassifier) and not loaded.training
    assert torch.equal(logits(loaded, x), before)
    assert torch.equal(loaded.mean, model.mean) and torch.equal(loaded.std, model.std)
    buffers = load_file(str(folder / "preprocess.safetensors"))
    assert {"mean", "std", "scale", "image_size"} <= set(buffers)
    assert not list(folder.glob("*.bin"))


def test_a_vits_patch_size_divides_the_images_unless_given(
    gray: DataSource, rgb: DataSource, tmp_path: Path
) -> None:
    assert (patch_default(28, 28), patch_default(32, 32), patch_default(224, 224)) == (4, 4, 16)
    assert (patch_default(64, 64), patch_default(30, 30), patch_default(31, 31)) == (8, 3, 1)
    for data, name in ((gray, "g"), (rgb, "c")):
        folder = prepared(VIT, data, tmp_path / name)
        config = json.loads((folder / "config.json").read_text())
        assert config["patch_size"] == 4
    given = prepared(VIT + ",patch_size=7", gray, tmp_path / "given")
    assert json.loads((given / "config.json").read_text())["patch_size"] == 7


def test_dashes_make_lists_and_a_number_for_a_list_becomes_one() -> None:
    values = parse_overrides("embedding_size=32,hidden_sizes=32-64,depths=1-1,"
                             "layer_norm_eps=1e-5,hidden_act=gelu_new,drop=0.5-0.25",
                             "spec", "--student")
    assert values == {"embedding_size": 32, "hidden_sizes": [32, 64], "depths": [1, 1],
                      "layer_norm_eps": 1e-5, "hidden_act": "gelu_new", "drop": [0.5, 0.25]}
    assert parse_overrides("name=a-b", "spec", "--student") == {"name": "a-b"}
    from kdflow.models.hf_source import checked_overrides

    assert checked_overrides("resnet", {"depths": 2}, "spec", "--student") == {"depths": [2]}


def test_per_channel_statistics_follow_the_law_of_total_variance() -> None:
    # Two channels of two pixels: channel 0's pixels have means 51, 153 and std 0, 51.
    mean = [51.0, 153.0, 102.0, 102.0]
    std = [0.0, 51.0, 25.5, 25.5]
    means, stds = channel_stats((mean, std), [2, 1, 2])
    assert means == pytest.approx([0.4, 0.4])
    assert stds[0] == pytest.approx(np.sqrt((0 + 0.2**2) / 2 + 0.2**2))
    assert stds[1] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="one per pixel"):
        channel_stats(([1.0], [1.0]), [1, 2, 2])


def test_build_normalises_with_the_statistics_it_is_given(
    gray: DataSource, tmp_path: Path
) -> None:
    template = prepared(RESNET, gray, tmp_path / "t")
    stats = ([25.5] * 784, [51.0] * 784)
    model = built(RESNET, gray, template, stats)
    assert model.mean.tolist() == pytest.approx([0.1])
    assert model.std.tolist() == pytest.approx([0.2])


# ------------------------------------------------------------------------------------ hf:


def vit_folder(folder: Path, labels: list[str], processor: dict[str, Any] | None) -> Path:
    """What a user's save_pretrained writes for a ViT at 64 px, with its processor."""
    from transformers import AutoModelForImageClassification, ViTConfig

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, patch_size=8, image_size=64,
                       id2label=dict(enumerate(labels)),
                       label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(0)
    AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


PROCESSOR_64 = {
    "image_processor_type": "ViTImageProcessor", "do_resize": True,
    "size": {"height": 64, "width": 64}, "resample": 2, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
}


@pytest.fixture(scope="module")
def pretrained_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vit_folder(tmp_path_factory.mktemp("user") / "vit", CLASSES, PROCESSOR_64)


def by_hand(x: torch.Tensor, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """The pixel_values a processor of `size`, `mean` and `std` makes, computed here."""
    x = F.interpolate(x.float() / 255, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    x = x.expand(-1, len(mean), -1, -1)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_a_pretrained_folder_resizes_and_normalises_as_its_processor_says(
    pretrained_vit: Path, rgb: DataSource, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageClassification, ViTImageProcessorPil

    spec = f"hf:{pretrained_vit}"
    Pretrained().check(spec, "--teachers")
    out = Pretrained().fetch(spec, tmp_path / "fetched", None,
                             PrepareContext(data=rgb, option="--teachers"))
    model, saved = load_hf_image(out)
    assert saved["new_head"] is False and saved["trust_remote_code"] is False
    assert model.image_size.tolist() == [64, 64] and model.input_shape == [3, 32, 32]
    torch.testing.assert_close(model.mean, torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(model.std, torch.tensor(IMAGENET_STD))
    x = pixels(rgb)
    hf = AutoModelForImageClassification.from_pretrained(pretrained_vit).eval()
    with torch.no_grad():
        expected = hf(pixel_values=by_hand(x, 64, IMAGENET_MEAN, IMAGENET_STD)).logits
    torch.testing.assert_close(logits(model, x), expected, atol=1e-5, rtol=1e-5)
    # transformers' own (PIL) processor makes the same pixel values, to a gray level.
    settings: dict[str, Any] = {k: v for k, v in PROCESSOR_64.items()
                                if k != "image_processor_type"}
    processor = ViTImageProcessorPil(**settings)
    theirs = processor(images=[i.permute(1, 2, 0).numpy() for i in x],
                       return_tensors="pt")["pixel_values"]
    assert (model.pixel_values(x) - theirs).abs().max() < 1.5 / 255 / min(IMAGENET_STD)


def test_gray_images_into_an_rgb_model_repeat_their_channel(
    pretrained_vit: Path, gray: DataSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoModelForImageClassification

    with caplog.at_level(logging.INFO, logger="kdflow.models.hf_source"):
        out = Pretrained().fetch(f"hf:{pretrained_vit}", tmp_path / "fetched", None,
                                 PrepareContext(data=gray, option="--teachers"))
    assert "gray repeated" in caplog.text
    model, _ = load_hf_image(out)
    x = pixels(gray)
    assert x.shape[1] == 1 and model.channels == 3
    hf = AutoModelForImageClassification.from_pretrained(pretrained_vit).eval()
    with torch.no_grad():
        expected = hf(pixel_values=by_hand(x, 64, IMAGENET_MEAN, IMAGENET_STD)).logits
    torch.testing.assert_close(logits(model, x), expected, atol=1e-5, rtol=1e-5)


def test_rgb_images_into_a_gray_model_are_turned_to_luma(
    gray: DataSource, rgb: DataSource, tmp_path: Path
) -> None:
    folder = prepared(RESNET, gray, tmp_path / "gray-resnet")
    out = Pretrained().fetch(f"hf:{folder}", tmp_path / "fetched", None,
                             PrepareContext(data=rgb, option="--teachers"))
    model, _ = load_hf_image(out)
    assert model.channels == 1 and model.input_shape == [3, 32, 32]
    assert model.image_size.tolist() == [28, 28]  # the gray model's own size
    x = pixels(rgb)
    luma = (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, True)
    expected = F.interpolate(luma / 255, size=(28, 28), mode="bilinear", antialias=True)
    torch.testing.assert_close(model.pixel_values(x), (expected - model.mean) / model.std)


def test_a_pretrained_folder_with_other_labels_gets_a_new_head(
    rgb: DataSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = vit_folder(tmp_path / "five", ["a", "b", "c", "d", "e"], PROCESSOR_64)
    context = PrepareContext(data=rgb, option="--teachers")
    with pytest.raises(ConfigError, match="fine-tune it"):
        Pretrained().fetch(f"hf:{folder}", tmp_path / "fetched", None, context)
    with caplog.at_level(logging.WARNING, logger="kdflow.models.hf_source"):
        Pretrained().prepare(f"hf:{folder}", context, tmp_path / "tuned")
    assert "new classification head" in caplog.text
    model, saved = load_hf_image(tmp_path / "tuned")
    assert saved["new_head"] is True and model.head().out_features == 3
    assert logits(model, pixels(rgb)).shape == (8, 3)


def test_a_folder_without_a_processor_config_reads_the_datas_size_with_neutral_values(
    gray: DataSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = prepared(RESNET, gray, tmp_path / "resnet")
    (folder / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.INFO, logger="kdflow.models.hf_source"):
        out = Pretrained().fetch(f"hf:{folder}", tmp_path / "fetched", None,
                                 PrepareContext(data=gray))
    assert "no preprocessor_config.json" in caplog.text
    model, _ = load_hf_image(out)
    assert model.image_size.tolist() == [28, 28]
    assert model.mean.tolist() == [0.5] and model.std.tolist() == [0.5]
    # A ViT runs only at its own size: without a processor, at its config's.
    vit = vit_folder(tmp_path / "vit", CLASSES, None)
    out = Pretrained().fetch(f"hf:{vit}", tmp_path / "vit-fetched", None,
                             PrepareContext(data=gray))
    model, _ = load_hf_image(out)
    assert model.image_size.tolist() == [64, 64]


def test_processor_configs_are_read_as_transformers_reads_them() -> None:
    def read(processor: dict[str, Any], hw: tuple[int, int] = (32, 32)) -> Any:
        return processor_preprocessing(processor, 3, hw)

    square = read({"image_processor_type": "ViTImageProcessor", "size": 40})
    assert (square.resize, square.size, square.mean) == ((40, 40), (40, 40), [0.5] * 3)
    edge = read({"size": {"shortest_edge": 36}}, (32, 64))
    assert edge.resize == edge.size == (36, 72)
    convnext = read({"feature_extractor_type": "ConvNextFeatureExtractor", "size": 40,
                     "crop_pct": 0.875, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD})
    assert (convnext.resize, convnext.size) == ((45, 45), (40, 40))
    cropped = read({"size": {"shortest_edge": 48}, "do_center_crop": True,
                    "crop_size": {"height": 40, "width": 40}})
    assert (cropped.resize, cropped.size) == ((48, 48), (40, 40))
    raw = read({"size": {"height": 32, "width": 32}, "do_rescale": False, "do_normalize": False})
    assert (raw.scale, raw.mean, raw.std) == (1.0, [0.0] * 3, [1.0] * 3)


def test_a_saved_folders_processor_config_reads_back_with_auto_image_processor(
    pretrained_vit: Path, rgb: DataSource, tmp_path: Path
) -> None:
    from transformers import AutoImageProcessor

    out = Pretrained().fetch(f"hf:{pretrained_vit}", tmp_path / "fetched", None,
                             PrepareContext(data=rgb))
    model, _ = load_hf_image(out)
    processor = AutoImageProcessor.from_pretrained(out)  # no torchvision: the PIL backend
    assert (processor.size["height"], processor.size["width"]) == (64, 64)
    assert list(processor.image_mean) == pytest.approx(IMAGENET_MEAN)
    assert list(processor.image_std) == pytest.approx(IMAGENET_STD)
    x = pixels(rgb)
    theirs = processor(images=[i.permute(1, 2, 0).numpy() for i in x],
                       return_tensors="pt")["pixel_values"]
    assert (model.pixel_values(x) - theirs).abs().max() < 1.5 / 255 / min(IMAGENET_STD)


# ----------------------------------------------------------------------------- the hints


@pytest.fixture(scope="module")
def tiny_models(gray: DataSource, tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, HfImageClassifier]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        name: built(TINY[name], gray, prepared(TINY[name], gray, root / name))
        for name in ("resnet", "vit")
    }


def test_hidden_and_attention_taps_see_the_models_states(
    tiny_models: dict[str, HfImageClassifier], gray: DataSource
) -> None:
    source = source_for(RESNET)
    resnet, vit = tiny_models["resnet"], tiny_models["vit"]
    assert {"hidden.0", "hidden.1", "hidden.2"} <= set(source.layers(resnet))
    assert source.attention_maps(resnet) == [] and not source.tokens_last(resnet)
    assert {"hidden.0", "hidden.2", "attention.0", "attention.1"} <= set(source.layers(vit))
    assert len(source.attention_maps(vit)) == 2 and source.tokens_last(vit)
    assert source.head(resnet).out_features == source.head(vit).out_features == 3
    seen: dict[str, torch.Tensor] = {}
    hooks = [source.layers(m)[name].register_forward_hook(
        lambda _m, _i, out, key=f"{arch}.{name}": seen.__setitem__(key, out))
        for arch, m in tiny_models.items()
        for name in ("hidden.0", "hidden.2") + (("attention.1",) if arch == "vit" else ())]
    try:
        for model in tiny_models.values():
            logits(model, pixels(gray))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen["resnet.hidden.0"].shape == (8, 32, 7, 7)
    assert seen["resnet.hidden.2"].shape == (8, 64, 4, 4)
    assert seen["vit.hidden.2"].shape == (8, 50, 32)  # 7 × 7 patches and the class token
    assert seen["vit.attention.1"].shape == (8, 2, 50, 50)


def test_a_feature_hint_pairs_a_cnn_teacher_with_a_vit_student(
    tiny_models: dict[str, HfImageClassifier]
) -> None:
    source = source_for(RESNET)
    cfg = DistillConfig(teacher_mode="online", feature_weight=1.0,
                        feature_layers=["hidden.2=hidden.2"])
    plan = make_plan(cfg, tiny_models["resnet"], tiny_models["vit"], source,  # type: ignore[arg-type]
                     source)
    pair = plan.pairs[0]
    assert (pair.teacher_width, pair.student_width) == (64, 32)
    assert (pair.teacher_channels_last, pair.student_channels_last) == (False, True)


# ---------------------------------------------------------------------------------- ONNX


def test_resnet_and_vit_export_to_onnx_taking_uint8_pixels(
    tiny_models: dict[str, HfImageClassifier], pretrained_vit: Path, rgb: DataSource,
    gray: DataSource, tmp_path: Path,
) -> None:
    from kdflow.models.onnx import check_parity, export_onnx, onnx_session, require_parity

    resized = Pretrained().fetch(f"hf:{pretrained_vit}", tmp_path / "vit64", None,
                                 PrepareContext(data=rgb))
    models = {"resnet": (tiny_models["resnet"], gray), "vit": (tiny_models["vit"], gray),
              "vit-resized": (load_hf_image(resized)[0], rgb)}
    for name, (model, data) in models.items():
        x = pixels(data).numpy()
        path = export_onnx(model, x, tmp_path / f"{name}.onnx")
        session = onnx_session(path)
        assert session.get_inputs()[0].type == "tensor(uint8)", name
        got = session.run(["logits"], {session.get_inputs()[0].name: x})[0]  # batch 8, not 2
        parity = check_parity(logits(model, torch.from_numpy(x)).numpy(), got)
        require_parity(parity, name)


# ------------------------------------------------------------------------ hf-from-teacher:


def test_a_vit_student_takes_evenly_spaced_layers_and_the_teachers_preprocessing(
    gray: DataSource, tmp_path: Path
) -> None:
    teacher = prepared(VIT.replace("num_hidden_layers=2", "num_hidden_layers=4"), gray,
                       tmp_path / "teacher", option="--teachers")
    spec = "hf-from-teacher:num_hidden_layers=2"
    folder = prepared(spec, gray, tmp_path / "student", teacher=str(teacher))
    saved = json.loads((folder / "spec.json").read_text())
    assert saved["from_teacher"]["layers"] == [0, 2]
    student, teachers = load_file(str(folder / "model.safetensors")), load_file(
        str(teacher / "model.safetensors"))
    part = "attention.attention.query.weight"
    for j, i in ((0, 0), (1, 2)):
        mine, theirs = f"vit.encoder.layer.{j}.{part}", f"vit.encoder.layer.{i}.{part}"
        assert torch.equal(student[mine], teachers[theirs])
    built, _ = load_hf_image(folder)
    teacher_model, _ = load_hf_image(teacher)
    assert torch.equal(built.mean, teacher_model.mean) and built.tokens_last
    assert logits(built, pixels(gray)).shape == (8, 3)


def test_a_resnet_student_keeps_each_stages_first_blocks(
    gray: DataSource, tmp_path: Path
) -> None:
    teacher = prepared(RESNET.replace("depths=1-1", "depths=2-2"), gray, tmp_path / "teacher")
    folder = prepared("hf-from-teacher:depths=1-1", gray, tmp_path / "student",
                      teacher=str(teacher))
    config = json.loads((folder / "config.json").read_text())
    assert config["depths"] == [1, 1] and config["stage_names"] == ["stem", "stage1", "stage2"]
    student, teachers = load_file(str(folder / "model.safetensors")), load_file(
        str(teacher / "model.safetensors"))
    assert "resnet.encoder.stages.1.layers.1.layer.0.convolution.weight" not in student
    for name in ("resnet.encoder.stages.1.layers.0.layer.1.convolution.weight",
                 "resnet.embedder.embedder.convolution.weight", "classifier.1.weight"):
        assert torch.equal(student[name], teachers[name]), name
    assert logits(load_hf_image(folder)[0], pixels(gray)).shape == (8, 3)


# ----------------------------------------------------------------------- refused specs


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> DataSource:
    return open_source(str(text_dataset(tmp_path_factory.mktemp("text") / "dataset")))


def test_bad_specs_are_config_errors_naming_the_option(
    gray: DataSource, text: DataSource, tmp_path: Path, pretrained_vit: Path
) -> None:
    def refused(spec: str, data: DataSource, match: str) -> None:
        with pytest.raises(ConfigError, match=match) as caught:
            source = source_for(spec)
            source.check(spec, "--teachers")
            source.prepare(spec, PrepareContext(data=data, option="--teachers"), tmp_path / "x")
        assert caught.value.option == "--teachers"
        assert str(caught.value).startswith("--teachers: ")

    refused("hf-config:resnett:depths=1", gray, "unknown model type 'resnett'.*vit, resnet")
    refused("hf-config:resnet:hiden_sizes=32-64", gray, "resnet configs have no hiden_sizes")
    refused("hf-config:resnet:depths=a-b", gray, "depths")
    refused(tiny_bert(1), gray, "bert reads text, this data is images.*vit, resnet")
    refused(RESNET, text, "resnet reads images, this data is text.*bert")
    refused(f"hf:{pretrained_vit}", text, "vit reads images, this data is text")
    with pytest.raises(ConfigError, match="reads image"):
        build(RESNET, text.meta, template=prepared(RESNET, gray, tmp_path / "image"))
    with pytest.raises(ConfigError, match="not fetched"):
        FromConfig().fetch(RESNET, tmp_path / "y", None, PrepareContext(data=gray))
    with pytest.raises(ConfigError, match="needs a teacher"):
        FromTeacher().prepare("hf-from-teacher:depths=1-1", PrepareContext(data=gray),
                              tmp_path / "z")
