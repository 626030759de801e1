"""Inference over arrays of rows (`kdflow.models.inference`): logits in batches, accuracy."""

from __future__ import annotations

import numpy as np
import torch

from kdflow.data.prepared import Split
from kdflow.models.inference import accuracy, predict_logits
from kdflow.models.zoo import build_classifier


def new_model():
    torch.manual_seed(0)
    return build_classifier("mlp:hidden=8", [4], 2, 4)


def test_predict_logits_in_batches_equals_a_single_pass():
    model = new_model()
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    batched = predict_logits(model, x, batch_size=7)
    whole = predict_logits(model, x, batch_size=1024)
    assert batched.shape == (50, 2)
    torch.testing.assert_close(batched, whole)


def test_predict_logits_of_no_rows_is_empty():
    assert predict_logits(new_model(), np.zeros((0, 4), np.float32)).numel() == 0


def test_accuracy_is_the_share_of_rows_whose_top_logit_is_the_label():
    model = new_model()
    x = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    predicted = predict_logits(model, x).argmax(-1).numpy()
    labels = predicted.copy()
    labels[:5] = 1 - labels[:5]  # 5 of 20 wrong
    assert accuracy(model, Split(x=x, y=labels)) == 0.75


def test_accuracy_of_an_empty_split_is_nan():
    empty = Split(x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64))
    assert np.isnan(accuracy(new_model(), empty))


class PackedTokens(torch.nn.Module):
    """Takes packed int64 B × K × L like a text model: an embedding lookup of the ids,
    mean-pooled under the mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.int64
        mask = x[:, 1].unsqueeze(-1).float()
        return (self.embed(x[:, 0]) * mask).sum(1) / mask.sum(1).clamp(min=1)


def test_predict_logits_keeps_packed_token_ids_integers():
    torch.manual_seed(0)
    model = PackedTokens()
    rng = np.random.default_rng(2)
    x = np.stack([rng.integers(0, 10, (9, 5)), rng.integers(0, 2, (9, 5))], axis=1)
    x.flags.writeable = False  # as a cached or memory-mapped array can be
    logits = predict_logits(model, x, batch_size=4)
    with torch.no_grad():
        expected = model(torch.from_numpy(x.copy()))
    torch.testing.assert_close(logits, expected)
    assert predict_logits(model, x.astype(np.int32)).shape == (9, 3)
    labels = expected.argmax(-1).numpy()
    assert accuracy(model, Split(x=x, y=labels)) == 1.0


def test_predict_logits_gives_float64_rows_to_a_float32_model():
    model = new_model()
    x = np.random.default_rng(3).normal(size=(6, 4))
    torch.testing.assert_close(predict_logits(model, x),
                               predict_logits(model, x.astype(np.float32)))
