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
