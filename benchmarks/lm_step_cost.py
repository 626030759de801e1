"""What token-level KD adds to a causal-LM training step, by student size.

    python -m benchmarks.lm_step_cost [--steps 12] [--vocab 8192]

One training step (forward, `chunked_lm_loss`, backward, AdamW) of a GPT-2 student built from
its config, with next-token cross-entropy only (the no-KD baseline's step) and with forward
KL against cached top-64 teacher targets and their tail bucket (alpha 0.5, temperature 1 and
2): the KD step's extra work is the loss's, per token and over the vocabulary (the softmax
terms of the targets and the tail), while the model's forward and backward grow with its
width and depth. So the ratio KD / plain falls as the student grows; this measures where.

The variants of one size run interleaved, step by step (plain, KD at T 1, ..., plain, ...) on
the same batch, so a machine shared with other jobs slows them alike; the figure is the ratio
of the fastest step of each (the least disturbed; the medians are in the JSON). The
`exact-tail` variants force every row's tail through the masked logsumexp over the
vocabulary (`FAST_TAIL = inf`), which is what every row paid before the tail was taken from
the K logits over S: the same loss, the earlier cost. One thread. The table goes to stdout
and to benchmarks/results/lm_step_cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from kdflow.distill import lm_losses
from kdflow.distill.lm_losses import chunked_lm_loss, teacher_top_k

RESULTS = Path(__file__).parent / "results" / "lm_step_cost.md"
BATCH, LENGTH, TOP_K, ALPHA = 16, 128, 64, 0.5
SIZES = (  # (n_layer, n_embd, n_head): kdflow's benchmark student, then wider ones
    (2, 64, 2),
    (2, 256, 4),
    (4, 512, 8),
)
VARIANTS = ("plain", "kd-T1", "kd-T1-exact-tail", "kd-T2", "kd-T2-exact-tail")


def student(vocab: int, n_layer: int, n_embd: int, n_head: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_positions=LENGTH, n_layer=n_layer, n_embd=n_embd,
                        n_head=n_head)
    return GPT2LMHeadModel(config)


def targets(vocab: int, temperature: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids and probabilities of a made-up teacher (peaked logits, as a trained LM's)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(BATCH, LENGTH, vocab, generator=g) * 3.0
    values, ids = teacher_top_k(logits, TOP_K, temperature)
    return ids.long(), values.float().exp()


def run_size(vocab: int, size: tuple[int, int, int], steps: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = student(vocab, *size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab, (BATCH, LENGTH))
    labels = torch.cat([x[:, 1:], torch.full((BATCH, 1), -100)], 1)
    soft = {"kd-T1": (1.0, *targets(vocab, 1.0, 1)), "kd-T2": (2.0, *targets(vocab, 2.0, 2))}
    fast_tail = lm_losses.FAST_TAIL

    def step(variant: str) -> float:
        start = time.perf_counter()
        hidden = model.transformer(input_ids=x).last_hidden_state
        if variant == "plain":
            out = chunked_lm_loss(hidden, model.lm_head, labels)
        else:
            t, ids, probs = soft[variant.removesuffix("-exact-tail")]
            lm_losses.FAST_TAIL = float("inf") if variant.endswith("exact-tail") else fast_tail
            out = chunked_lm_loss(hidden, model.lm_head, labels, ids, probs,
                                  kind="forward_kl", alpha=ALPHA, temperature=t)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        lm_losses.FAST_TAIL = fast_tail
        optimizer.step()
        return time.perf_counter() - start

    for variant in VARIANTS:  # warm-up
        step(variant)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(steps):
        for variant in VARIANTS:
            times[variant].append(step(variant))
    best = {v: min(t) for v, t in times.items()}
    median = {v: statistics.median(t) for v, t in times.items()}
    return {
        "n_layer": size[0], "n_embd": size[1], "n_head": size[2],
        "parameters": sum(p.numel() for p in model.parameters()),
        "plain_s": best["plain"],
        "ratio": {v: round(best[v] / best["plain"], 4) for v in VARIANTS[1:]},
        "median_ratio": {v: round(median[v] / median["plain"], 4) for v in VARIANTS[1:]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    rows = []
    for size in SIZES:
        row = run_size(args.vocab, size, args.steps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    took = time.perf_counter() - began
    load = os.getloadavg()[0]
    lines = [
        "# Causal LM: the cost of token-level KD in a training step, by student size",
        "",
        f"Command: `python -m benchmarks.lm_step_cost --steps {args.steps} --vocab "
        f"{args.vocab}` (took {took:.0f} s).",
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}, one thread; load average "
        f"{load:.1f} at the end (2 cores, shared with other jobs). Batch {BATCH} × {LENGTH} "
        f"tokens, vocabulary {args.vocab:,}; a step is forward, `chunked_lm_loss`, backward "
        f"and AdamW. KD: forward KL against top-{TOP_K} cached targets with the tail bucket, "
        f"alpha {ALPHA}. Fastest of {args.steps} steps per variant, interleaved on one batch; "
        "`exact tail`: every row's tail by the masked logsumexp, the cost before.",
        "",
        "| student (layers × width) | parameters | plain step (s) | KD / plain, T 1 | "
        "T 1, exact tail | KD / plain, T 2 | T 2, exact tail |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = r["ratio"]
        assert isinstance(ratio, dict)
        lines.append(
            f"| {r['n_layer']} × {r['n_embd']} | {r['parameters']:,} | {r['plain_s']:.3f} | "
            + " | ".join(f"{ratio[v]:.3f}" for v in VARIANTS[1:]) + " |"
        )
    lines += ["", "```json", json.dumps(rows, indent=1), "```", ""]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
