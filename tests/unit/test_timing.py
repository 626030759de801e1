"""What a model costs on CPU (`kdflow.evaluation.timing`): FLOPs, latency, throughput."""

import torch

from kdflow.evaluation.timing import cpu_latency_ms, cpu_timings, flops_per_sample, torch_runner
from kdflow.models.zoo import build_classifier


def test_cpu_latency_is_positive_and_bigger_model_is_slower():
    torch.manual_seed(0)
    models = {
        "big": build_classifier("mlp:hidden=2048-2048", [64], 10, 64),
        "small": build_classifier("mlp:hidden=8", [64], 10, 64),
    }
    latency = cpu_latency_ms(models, 64, repeats=30, warmup=3)
    assert set(latency) == {"big", "small"}
    assert latency["small"] > 0
    assert latency["big"] > 3 * latency["small"]


def test_cpu_latency_restores_the_thread_count():
    before = torch.get_num_threads()
    cpu_latency_ms({"m": build_classifier("mlp:hidden=4", [4], 2, 4)}, 4, repeats=2, warmup=1)
    assert torch.get_num_threads() == before


def test_flops_count_each_multiply_add_of_the_linear_layers_twice():
    model = build_classifier("mlp:hidden=16", [64], 10, 64)
    assert flops_per_sample(model, 64) == 2 * (64 * 16 + 16 * 10)


def test_cpu_timings_give_p50_p95_and_throughput_for_any_runner():
    model = build_classifier("mlp:hidden=8", [16], 3, 16)
    calls = []

    def numpy_runner(x):
        calls.append(x.shape[0])
        return x.sum()

    timings = cpu_timings(
        {"torch": torch_runner(model), "numpy": numpy_runner}, 16, repeats=20, warmup=2,
        batch_repeats=3, batch_size=32,
    )
    for t in timings.values():
        assert 0 < t.latency_ms <= t.latency_p95_ms
        assert t.throughput_per_s > 0
    assert calls.count(32) == 4  # one warm-up and three timed batches
    untimed = cpu_timings({"torch": torch_runner(model)}, 16, repeats=2, warmup=1,
                          batch_repeats=0)
    assert untimed["torch"].throughput_per_s is None


def test_each_timed_runner_runs_on_its_own_inputs():
    import numpy as np

    from kdflow.evaluation.timing import Timed

    seen: dict[str, set] = {"ints": set(), "texts": set(), "plain": set()}

    def recorder(name):
        def run(x):
            kind = type(x[0][0]).__name__ if isinstance(x, list) else str(x.dtype)
            seen[name].add((kind, len(x[0]) if isinstance(x, list) else x.shape[0]))
        return run

    ints = np.zeros((1, 2, 8), np.int64), np.zeros((5, 2, 8), np.int64)
    timings = cpu_timings(
        {"ints": Timed(recorder("ints"), *ints, rows=5),
         "texts": Timed(recorder("texts"), [["one"]], [["a", "b", "c"]], rows=3),
         "plain": recorder("plain")},
        4, repeats=3, warmup=1, batch_repeats=2, batch_size=6,
    )
    assert seen == {"ints": {("int64", 1), ("int64", 5)}, "texts": {("str", 1), ("str", 3)},
                    "plain": {("float32", 1), ("float32", 6)}}
    assert all(t.throughput_per_s > 0 for t in timings.values())
    only_latency = cpu_timings({"ints": Timed(recorder("ints"), ints[0])}, repeats=2, warmup=1)
    assert only_latency["ints"].throughput_per_s is None


def test_plain_runners_need_a_feature_count():
    import pytest

    with pytest.raises(ValueError, match="give n_features"):
        cpu_timings({"m": lambda x: x}, repeats=1, warmup=0)


def test_text_inputs_take_the_median_length_row_and_fill_the_batch():
    import numpy as np

    from kdflow.evaluation.timing import text_inputs, typical_row

    texts = [["aaaa", "a", "aaaaaaaaa", "aa", "aaa"]]
    assert typical_row(texts) == 4  # lengths 4 1 9 2 3: the median is 3
    assert typical_row([["ab", "a"], ["", "aaaa"]]) == 0  # pairs: both columns count
    inputs = np.arange(5)[:, None, None] * np.ones((1, 2, 3), np.int64)
    one, many, one_text, many_text = text_inputs(inputs, texts, batch_size=7)
    assert one.shape == (1, 2, 3) and one[0, 0, 0] == 4 and one_text == [["aaa"]]
    assert many.shape == (7, 2, 3) and list(many[:, 0, 0]) == [0, 1, 2, 3, 4, 0, 1]
    assert many_text == [[texts[0][i] for i in (0, 1, 2, 3, 4, 0, 1)]]


def test_model_flops_use_a_models_own_count_or_the_counter():
    from torch import nn

    from kdflow.evaluation.timing import model_flops

    class Counted(nn.Linear):
        def flops(self):
            return 1234

    assert model_flops(Counted(2, 2), 2) == 1234
    assert model_flops(build_classifier("mlp:hidden=16", [64], 10, 64), 64) == 2 * (
        64 * 16 + 16 * 10)

    class Encoded(nn.Linear):
        encoder = type("E", (), {"encode": lambda self, columns: None})()

    assert model_flops(Encoded(2, 2), 0) is None
