#!/usr/bin/env python
"""The cost of the policy's composite layer norm (``ssm.LayerNorm``) against torch's fused one.

The same policy is timed three times, interleaved (so load changes on a shared machine hit all
alike): with its own norms (``ssm.LayerNorm``: composite in transforms and exact mode, else fused),
with norms that are always composite, and with every norm swapped for an ``nn.LayerNorm`` (fused)
holding the same parameters. Three paths: a policy ``step`` at B=16 under ``no_grad`` (acting), a
sequence forward under ``no_grad`` at B=16, L=128, and a training pass (forward + backward).

Usage::

    python experiments/bench_layer_norm.py [--kind gru] [--d-model 64] [--repeats 200]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from ssm import LayerNorm, PolicySpec, SequencePolicy
from ssm.norm import composite_layer_norm


class AlwaysComposite(LayerNorm):
    def forward(self, x):
        return composite_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def with_norms(policy: SequencePolicy, cls: type[nn.LayerNorm]) -> SequencePolicy:
    """``policy`` with each ``ssm.LayerNorm`` replaced by a ``cls`` (same values)."""
    other = copy.deepcopy(policy)
    for parent in other.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, LayerNorm):
                norm = cls(child.normalized_shape, child.eps)
                norm.load_state_dict(child.state_dict())
                setattr(parent, name, norm)
    return other


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="gru")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = PolicySpec(
        {"type": "box", "shape": [8]}, {"type": "discrete", "n": 4}, kind=args.kind,
        d_model=args.d_model, n_layers=args.n_layers,
    )  # fmt: skip
    ours = SequencePolicy.from_spec(spec)
    variants = {
        "ssm.LayerNorm": ours,
        "composite": with_norms(ours, AlwaysComposite),
        "fused": with_norms(ours, nn.LayerNorm),
    }
    B, L = 16, 128
    obs_step, obs_seq = torch.randn(B, 8), torch.randn(B, L, 8)
    state = ours.initial_state(B)

    def step(p):
        with torch.no_grad():
            p.step(obs_step, state)

    def seq(p):
        with torch.no_grad():
            p(obs_seq)

    def train(p):
        out, _ = p(obs_seq)
        (out.value.sum() + out.dist_params.sum()).backward()

    cases = [("step B=16 (no_grad)", step, args.repeats), ("sequence B=16 L=128 (no_grad)", seq,
             max(args.repeats // 10, 5)), ("train fwd+bwd B=16 L=128", train,
             max(args.repeats // 10, 5))]  # fmt: skip
    print(f"kind={args.kind} d_model={args.d_model} n_layers={args.n_layers} "
          f"threads={args.threads}, median of interleaved rounds")  # fmt: skip
    for name, fn, n in cases:
        times: dict[str, list[float]] = {k: [] for k in variants}
        for p in variants.values():
            fn(p)  # warm up
        for _ in range(5):  # interleaved rounds
            for key, p in variants.items():
                times[key] += timed(lambda fn=fn, p=p: fn(p), n // 5 or 1)
        med = {k: statistics.median(v) for k, v in times.items()}
        cols = "   ".join(f"{k} {v * 1e3:7.3f} ms" for k, v in med.items())
        ratio = " ".join(f"{k}/fused {med[k] / med['fused']:4.2f}" for k in list(med)[:2])
        print(f"{name:30s} {cols}   {ratio}")


if __name__ == "__main__":
    main()
