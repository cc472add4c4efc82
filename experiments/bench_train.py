#!/usr/bin/env python
"""End-to-end training throughput in one run: the framework's trainers against a CleanRL-style
recurrent PPO written here as the baseline.

    python experiments/bench_train.py                       # all benches, 1 thread, 3 repeats
    python experiments/bench_train.py --threads 2 --repeats 5 --out /tmp/bench.json
    python experiments/bench_train.py --quick               # tiny budgets: checks that it runs
    python experiments/bench_train.py --set KEY=VALUE       # a TrainConfig override, all benches
    python experiments/bench_train.py --compare BEFORE.json AFTER.json --md OUT.md

Benches (each times whole training iterations: collection, advantages and the update):

- ``cleanrl_gru/ppo/nav2d``: the baseline below, :class:`CleanRLGRUPPO`, CleanRL's
  ``ppo_atari_lstm.py`` structure with a GRU (an MLP encoder, ``torch.nn.GRU`` stepped once per
  env step with the state zeroed where an episode began, a Gaussian actor with a state-free
  log-std and a critic; a plain rollout loop over the vector env, GAE and PPO-clip epochs over
  minibatches of whole env sequences), on the same nav2d vector env
  (``make_family("nav2d").make_vector_env``), num_envs, num_steps, epochs and minibatches as
  the framework's PPO;
- ``ppo/nav2d/{mamba,gru}``: multi-task PPO (``algo=ppo``) as ``metarl train`` builds it
  (``metarl.config.load_config`` -> ``metarl.runner.build_trainer``), ``trainer.step()``;
- ``rl2/bandit/{gru,mamba}``: RL² with ``experiments/configs/rl2_bandit.yaml`` (64 trials of a
  5-armed bandit, horizon 100);
- ``maml/nav2d/mamba``: second-order MAML with ``experiments/configs/maml_nav2d.yaml`` (20 tasks
  x 20 support + 20 query trajectories of 100 steps): seconds per outer iteration.

Every bench runs one untimed warm-up chunk (kernel builds, allocator), then ``--repeats`` timed
chunks, interleaved (each repeat runs every bench once, the order rotating), so all benches see
the same machine load. Reported: the median env steps per second (all sub-envs counted; MAML's
support and query), the median seconds per iteration, and each bench's ratio to the baseline
(the median over repeats of sps(bench) / sps(baseline) in the same repeat). Only public APIs
that exist since commit 795ec96 are used, so the same script measures an older tree: put it
first on ``PYTHONPATH`` (the JSON records which ``metarl`` was imported and its commit).
Writes ``experiments/results/bench_train.json`` unless ``--out``; ``--compare`` writes a
before/after markdown table from two such files.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from results_io import run_metadata
from torch import nn
from torch.distributions import Normal

HERE = Path(__file__).resolve().parent


# --- the baseline: CleanRL-style recurrent PPO ------------------------------------------------


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    """CleanRL's initialisation: orthogonal weights with gain ``std``, constant bias."""
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class GRUAgent(nn.Module):
    """CleanRL's recurrent agent with a GRU for the LSTM and a Gaussian head:
    ``h_t = GRU(enc(o_t), (1 - d_t) h_{t-1})``, ``a ~ N(W_μ h_t, exp(log σ))``, ``V = w_v · h_t``
    (``d_t``: an episode began at ``o_t``)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, d_model: int, n_layers: int):
        super().__init__()
        self.encoder = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, d_model)),
            nn.Tanh(),
        )
        self.gru = nn.GRU(d_model, d_model, num_layers=n_layers)
        for name, param in self.gru.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                nn.init.orthogonal_(param, 1.0)
        self.actor_mean = layer_init(nn.Linear(d_model, act_dim), std=0.01)
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))
        self.critic = layer_init(nn.Linear(d_model, 1), std=1.0)

    def get_states(self, x, gru_state, done):
        hidden = self.encoder(x)
        batch_size = gru_state.shape[1]
        hidden = hidden.reshape((-1, batch_size, self.gru.input_size))  # (T B D)
        done = done.reshape((-1, batch_size))
        new_hidden = []
        for h, d in zip(hidden, done):
            h, gru_state = self.gru(h.unsqueeze(0), (1.0 - d).view(1, -1, 1) * gru_state)
            new_hidden += [h]
        return torch.flatten(torch.cat(new_hidden), 0, 1), gru_state  # (T*B D)

    def get_value(self, x, gru_state, done):
        hidden, _ = self.get_states(x, gru_state, done)
        return self.critic(hidden)

    def get_action_and_value(self, x, gru_state, done, action=None):
        hidden, gru_state = self.get_states(x, gru_state, done)
        action_mean = self.actor_mean(hidden)
        action_logstd = self.actor_logstd.expand_as(action_mean)
        probs = Normal(action_mean, action_logstd.exp())
        if action is None:
            action = probs.sample()
        logprob, entropy = probs.log_prob(action).sum(1), probs.entropy().sum(1)
        return action, logprob, entropy, self.critic(hidden), gru_state


class CleanRLGRUPPO:
    """PPO-clip (Schulman et al., 2017) as CleanRL's ``ppo_atari_lstm.py`` writes it, one
    :meth:`iteration` = ``num_steps`` steps of every env, GAE(λ), then ``update_epochs`` passes
    over minibatches of whole env sequences re-run from the rollout's initial GRU state."""

    def __init__(self, envs, ppo, hidden: int, d_model: int, n_layers: int, seed: int):
        self.envs, self.ppo = envs, ppo
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        obs_dim = int(np.prod(envs.single_observation_space.shape))
        act_dim = int(np.prod(envs.single_action_space.shape))
        self.low = envs.single_action_space.low
        self.high = envs.single_action_space.high
        self.agent = GRUAgent(obs_dim, act_dim, hidden, d_model, n_layers)
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=ppo.learning_rate, eps=1e-5)
        n, t = ppo.num_envs, ppo.num_steps
        self.obs = torch.zeros((t, n, obs_dim))
        self.actions = torch.zeros((t, n, act_dim))
        self.logprobs, self.rewards = torch.zeros((t, n)), torch.zeros((t, n))
        self.dones, self.values = torch.zeros((t, n)), torch.zeros((t, n))
        next_obs, _ = envs.reset(seed=seed)
        self.next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
        self.next_done = torch.zeros(n)
        self.next_gru_state = torch.zeros(n_layers, n, d_model)
        self.global_step = 0

    def iteration(self) -> int:
        ppo, agent, n, t_max = self.ppo, self.agent, self.ppo.num_envs, self.ppo.num_steps
        initial_gru_state = self.next_gru_state.clone()
        for step in range(t_max):
            self.obs[step], self.dones[step] = self.next_obs, self.next_done
            with torch.no_grad():
                action, logprob, _, value, self.next_gru_state = agent.get_action_and_value(
                    self.next_obs, self.next_gru_state, self.next_done
                )
            self.values[step] = value.flatten()
            self.actions[step], self.logprobs[step] = action, logprob
            act = np.clip(action.numpy(), self.low, self.high)  # gymnasium's ClipAction
            next_obs, reward, terminations, truncations, _ = self.envs.step(act)
            self.rewards[step] = torch.as_tensor(reward, dtype=torch.float32).view(-1)
            self.next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
            self.next_done = torch.as_tensor(np.logical_or(terminations, truncations)).float()
        self.global_step += n * t_max

        with torch.no_grad():  # GAE
            next_value = agent.get_value(self.next_obs, self.next_gru_state, self.next_done)
            next_value = next_value.reshape(1, -1)
            advantages = torch.zeros_like(self.rewards)
            lastgaelam = 0
            for t in reversed(range(t_max)):
                if t == t_max - 1:
                    nextnonterminal, nextvalues = 1.0 - self.next_done, next_value
                else:
                    nextnonterminal, nextvalues = 1.0 - self.dones[t + 1], self.values[t + 1]
                delta = self.rewards[t] + ppo.gamma * nextvalues * nextnonterminal - self.values[t]
                lastgaelam = delta + ppo.gamma * ppo.gae_lambda * nextnonterminal * lastgaelam
                advantages[t] = lastgaelam
            returns = advantages + self.values

        b_obs = self.obs.reshape(-1, self.obs.shape[-1])
        b_actions = self.actions.reshape(-1, self.actions.shape[-1])
        b_logprobs, b_dones = self.logprobs.reshape(-1), self.dones.reshape(-1)
        b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
        b_values = self.values.reshape(-1)
        envsperbatch = n // ppo.num_minibatches
        envinds = np.arange(n)
        flatinds = np.arange(n * t_max).reshape(t_max, n)
        for _ in range(ppo.update_epochs):
            self.rng.shuffle(envinds)
            for start in range(0, n, envsperbatch):
                mbenvinds = envinds[start : start + envsperbatch]
                mb_inds = flatinds[:, mbenvinds].ravel()  # be careful: sequences stay whole
                _, newlogprob, entropy, newvalue, _ = agent.get_action_and_value(
                    b_obs[mb_inds],
                    initial_gru_state[:, mbenvinds],
                    b_dones[mb_inds],
                    b_actions[mb_inds],
                )
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()  # noqa: F841 (CleanRL logs it)
                mb_advantages = b_advantages[mb_inds]
                if ppo.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (
                        mb_advantages.std() + 1e-8
                    )
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - ppo.clip_coef, 1 + ppo.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                newvalue = newvalue.view(-1)
                v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                v_clipped = b_values[mb_inds] + torch.clamp(
                    newvalue - b_values[mb_inds], -ppo.clip_coef, ppo.clip_coef
                )
                v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                loss = pg_loss - ppo.ent_coef * entropy.mean() + v_loss * ppo.vf_coef
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), ppo.max_grad_norm)
                self.optimizer.step()
        return n * t_max


# --- the benches --------------------------------------------------------------------------------


@dataclass
class Bench:
    """One timed workload: ``run()`` trains ``iterations`` iterations, returns env steps taken."""

    name: str
    run: Callable[[], int]
    iterations: int
    info: dict


def framework_bench(
    name: str, source, overrides: list[str], iterations: int, seed: int, fused: bool = False
) -> Bench:
    """A trainer exactly as ``metarl train`` builds it (``load_config`` -> ``build_trainer``).

    ``fused`` (plain PPO, trees whose Rollout has ``fused_step``): the trainer's episode source
    acts through a ``Rollout(..., fused_step=True)`` (no config key selects it yet)."""
    from metarl import Rollout
    from metarl.config import load_config
    from metarl.runner import build_trainer
    from metarl.train_config import TrainConfig, build_family, build_policy

    cfg = load_config(TrainConfig, source, [f"seed={seed}", *overrides])
    torch.manual_seed(seed)
    family = build_family(cfg)
    policy = build_policy(cfg, family)
    trainer = build_trainer(cfg, policy, family)
    if fused:
        src = trainer.source
        src.rollout = Rollout(
            policy,
            src.envs,
            generator=trainer.generator,
            seed=src.seed,
            task_ids=src.task_ids,
            fused_step=True,
        )

    def run() -> int:
        start = trainer.global_step
        for _ in range(iterations):
            trainer.step()
        return trainer.global_step - start

    rollout = getattr(trainer, "rollout", None)
    env = type(rollout.envs).__name__ if rollout is not None else None
    info = {
        "algo": cfg.algo,
        "family": cfg.family,
        "config": str(source) if not isinstance(source, dict) else source,
        "overrides": overrides,
        "policy": {
            "kind": cfg.policy.kind,
            "d_model": cfg.policy.d_model,
            "n_layers": cfg.policy.n_layers,
            "encoder_hidden": cfg.policy.encoder_hidden,
            "params": sum(p.numel() for p in policy.parameters()),
        },
        "vector_env": env,
    }
    return Bench(name, run, iterations, info)


def baseline_bench(
    ppo_overrides: list[str], iterations: int, seed: int, sync: bool = False
) -> Bench:
    """The CleanRL-style GRU PPO on the nav2d vector env, with the framework PPO's sizes.

    ``sync``: on gymnasium's ``SyncVectorEnv`` over one env per task (``batched=False``) instead of
    ``make_vector_env``'s default; the same code on the same env in every tree that has the
    option, so it anchors the load between runs of different trees."""
    from metarl import make_family
    from metarl.config import load_config
    from metarl.train_config import TrainConfig

    cfg = load_config(TrainConfig, {"algo": "ppo", "family": "nav2d"}, ppo_overrides)
    family = make_family("nav2d")
    tasks = family.sample(cfg.ppo.num_envs, split="train", seed=seed)
    envs = family.make_vector_env(tasks, seed=seed, **({"batched": False} if sync else {}))
    p = cfg.policy
    algo = CleanRLGRUPPO(envs, cfg.ppo, p.encoder_hidden, p.d_model, p.n_layers, seed)

    def run() -> int:
        return sum(algo.iteration() for _ in range(iterations))

    info = {
        "algo": "cleanrl-style recurrent ppo (this script)",
        "family": "nav2d",
        "overrides": ppo_overrides,
        "policy": {
            "kind": "torch.nn.GRU",
            "d_model": p.d_model,
            "n_layers": p.n_layers,
            "encoder_hidden": p.encoder_hidden,
            "params": sum(q.numel() for q in algo.agent.parameters()),
        },
        "vector_env": type(envs).__name__,
    }
    return Bench("cleanrl_gru/ppo/nav2d" + ("/sync" if sync else ""), run, iterations, info)


def make_benches(args) -> list[Bench]:
    ppo = [
        f"ppo.num_envs={args.ppo_envs}",
        f"ppo.num_steps={args.ppo_steps}",
        f"ppo.update_epochs={args.epochs}",
        f"ppo.num_minibatches={args.minibatches}",
        "ppo.total_steps=1000000000",  # far away: the learning rate barely anneals
    ]
    rl2 = ["rl2.total_steps=1000000000", f"rl2.num_envs={args.rl2_envs}"]
    maml = [
        "meta.iterations=1000000",
        f"meta.meta_batch_size={args.maml_tasks}",
        f"meta.episodes_per_task={args.maml_episodes}",
    ]
    extra = list(args.set)  # e.g. a speed option of the trainers, for every framework bench
    sizes = list(ppo)  # the baseline reads only the PPO sizes
    ppo, rl2, maml = [*ppo, *extra], [*rl2, *extra], [*maml, *extra]
    nav2d = {"algo": "ppo", "family": "nav2d"}
    configs = HERE / "configs"
    makers: dict[str, Callable[[], Bench]] = {
        "cleanrl_gru/ppo/nav2d": lambda: baseline_bench(sizes, args.ppo_iters, args.seed),
        "cleanrl_gru/ppo/nav2d/sync": lambda: baseline_bench(
            sizes, args.ppo_iters, args.seed, sync=True
        ),
        "ppo/nav2d/gru": lambda: framework_bench(
            "ppo/nav2d/gru", nav2d, [*ppo, "policy.kind=gru"], args.ppo_iters, args.seed
        ),
        "ppo/nav2d/mamba": lambda: framework_bench(
            "ppo/nav2d/mamba", nav2d, [*ppo, "policy.kind=mamba"], args.ppo_iters, args.seed
        ),
        "rl2/bandit/gru": lambda: framework_bench(
            "rl2/bandit/gru",
            configs / "rl2_bandit.yaml",
            [*rl2, "policy.kind=gru"],
            args.rl2_iters,
            args.seed,
        ),
        "rl2/bandit/mamba": lambda: framework_bench(
            "rl2/bandit/mamba",
            configs / "rl2_bandit.yaml",
            [*rl2, "policy.kind=mamba"],
            args.rl2_iters,
            args.seed,
        ),
        "maml/nav2d/mamba": lambda: framework_bench(
            "maml/nav2d/mamba",
            configs / "maml_nav2d.yaml",
            [*maml, "policy.kind=mamba"],
            args.maml_iters,
            args.seed,
        ),
    }
    unknown = [name for name in args.only if name not in makers]
    if unknown:
        raise ValueError(f"--only expects names from {sorted(makers)}, got {unknown}")
    from metarl import Rollout, make_family

    if "fused_step" in inspect.signature(Rollout).parameters:  # the fused policy step exists
        for kind in ("gru", "mamba"):
            name = f"ppo/nav2d/{kind}+fused_step"
            makers[name] = functools.partial(
                framework_bench,
                name,
                nav2d,
                [*ppo, f"policy.kind={kind}"],
                args.ppo_iters,
                args.seed,
                fused=True,
            )
    if "batched" not in inspect.signature(make_family("nav2d").make_vector_env).parameters:
        makers.pop("cleanrl_gru/ppo/nav2d/sync")  # before batched envs: the default is sync
    names = [n for n in args.only if n in makers] if args.only else list(makers)
    if "cleanrl_gru/ppo/nav2d" not in names:
        names = ["cleanrl_gru/ppo/nav2d", *names]  # ratios need the baseline in the same run
    return [makers[name]() for name in names]


# --- metadata -----------------------------------------------------------------------------------


def code_tree() -> dict:
    """Which ``metarl`` / ``ssm`` this process imported, and that tree's commit."""
    import metarl
    import ssm

    root = Path(metarl.__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], cwd=root, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    dirty = git("status", "--porcelain", "--", "ssm", "metarl")
    return {
        "root": str(root),
        "metarl": metarl.__file__,
        "ssm": ssm.__file__,
        "commit": git("rev-parse", "HEAD") + (" (dirty)" if dirty else ""),
        "subject": git("log", "-1", "--format=%s")[:120],
    }


# --- run ----------------------------------------------------------------------------------------


def measure(args) -> dict:
    """One run: warm-up, then ``args.repeats`` interleaved repeats; the samples and metadata."""
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    tree = code_tree()
    print(f"metarl from {tree['metarl']} at {tree['commit']}", flush=True)
    t0 = time.perf_counter()
    benches = make_benches(args)
    for b in benches:
        print(f"  {b.name}: {b.info['policy']} env={b.info['vector_env']}", flush=True)
    for b in benches:  # warm-up: kernel builds, allocator, first-call costs
        t = time.perf_counter()
        b.run()
        print(f"  warm-up {b.name:26s} {time.perf_counter() - t:7.2f} s", flush=True)
    samples: dict[str, list[dict]] = {b.name: [] for b in benches}
    for r in range(args.repeats):
        k = r % len(benches)
        for b in benches[k:] + benches[:k]:  # interleaved, the order rotating
            t = time.perf_counter()
            steps = b.run()
            dt = time.perf_counter() - t
            samples[b.name].append({"seconds": dt, "env_steps": steps, "iterations": b.iterations})
            print(f"  repeat {r}: {b.name:26s} {dt:7.2f} s  {steps / dt:9.0f} steps/s", flush=True)
    meta = run_metadata()
    meta["script_commit"] = meta.pop("commit")
    names = ("PYTHONPATH", "TORCH_EXTENSIONS_DIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    meta["environment"] = {k: os.environ[k] for k in names if k in os.environ}
    meta["machine"]["processor"] = platform.processor() or platform.machine()
    return {
        **meta,
        "commit": tree["commit"],
        "code": tree,
        "loadavg_start_end": [load_start, os.getloadavg()[0]],
        "wall_seconds": time.perf_counter() - t0,
        "settings": {
            "threads": args.threads,
            "repeats": args.repeats,
            "seed": args.seed,
            "quick": args.quick,
            "set": list(args.set),
            "sizes": {
                k: getattr(args, k)
                for k in ("ppo_envs", "ppo_steps", "epochs", "minibatches", "ppo_iters")
                + ("rl2_envs", "rl2_iters", "maml_tasks", "maml_episodes", "maml_iters")
            },
        },
        "benches": {b.name: b.info for b in benches},
        "samples": samples,
    }


BASELINE = "cleanrl_gru/ppo/nav2d"
ANCHOR = "cleanrl_gru/ppo/nav2d/sync"


def anchor_name(run: dict) -> str | None:
    """The baseline on gymnasium's SyncVectorEnv in this run (the same code in every tree)."""
    if ANCHOR in run["samples"]:
        return ANCHOR
    return BASELINE if run["benches"][BASELINE]["vector_env"] == "SyncVectorEnv" else None


def summarize(runs: list[dict]) -> dict:
    """Per bench, pooled over ``runs``: median steps/s and s/iteration, and the medians of the
    per-repeat ratios to the baseline and to the SyncVectorEnv baseline (the load anchor), each
    ratio taken between samples of the same repeat."""

    def sps(s: dict) -> float:
        return s["env_steps"] / s["seconds"]

    result = {}
    for name, info in runs[0]["benches"].items():
        pooled, vs_base, vs_anchor = [], [], []
        for run in runs:
            mine = [sps(s) for s in run["samples"][name]]
            pooled += run["samples"][name]
            vs_base += [x / sps(y) for x, y in zip(mine, run["samples"][BASELINE])]
            anchor = anchor_name(run)
            if anchor is not None:
                vs_anchor += [x / sps(y) for x, y in zip(mine, run["samples"][anchor])]
        rates = [sps(s) for s in pooled]
        result[name] = {
            **info,
            "env_steps_per_iteration": pooled[0]["env_steps"] // pooled[0]["iterations"],
            "samples": len(pooled),
            "steps_per_second": statistics.median(rates),
            "steps_per_second_range": [min(rates), max(rates)],
            "seconds_per_iteration": statistics.median(
                s["seconds"] / s["iterations"] for s in pooled
            ),
            "ratio_vs_baseline": statistics.median(vs_base),
            "ratio_vs_baseline_range": [min(vs_base), max(vs_base)],
            "ratio_vs_anchor": statistics.median(vs_anchor) if vs_anchor else None,
            "ratio_vs_anchor_range": [min(vs_anchor), max(vs_anchor)] if vs_anchor else None,
            "ratios_vs_anchor": vs_anchor,
        }
    return result


def corrected_speedup(before: list[float], after: list[float], draws: int = 4000) -> tuple:
    """median(after) / median(before) of the per-repeat ratios to the load anchor, and a 95%
    percentile-bootstrap interval (each side resampled with replacement, seed 0)."""
    rng = np.random.default_rng(0)
    b, a = np.asarray(before), np.asarray(after)
    boot = np.median(rng.choice(a, (draws, a.size)), 1) / np.median(
        rng.choice(b, (draws, b.size)), 1
    )
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)


def write_report(out: Path, run: dict, append: bool) -> dict:
    """Write ``out`` holding ``run`` (``append``: added to the runs already there, which must
    be of the same code and settings) and the summary over all its runs."""
    runs = [run]
    if append and out.exists():
        old = json.loads(out.read_text())
        for key in ("commit", "settings"):
            if old["runs"][0][key] != run[key]:
                raise ValueError(
                    f"--append: {out} holds runs with {key} {old['runs'][0][key]!r}, this run "
                    f"has {run[key]!r}; write to another --out"
                )
        runs = old["runs"] + [run]
    keep = ("command", "commit", "script_commit", "code", "machine", "settings")
    report = {**{k: run[k] for k in keep}, "runs": runs, "result": summarize(runs)}
    from ssm.util import write_json_atomic

    write_json_atomic(out, report)
    return report


def write_compare(before_path: Path, after_path: Path, md: Path, notes: list[str]) -> None:
    """A before/after markdown table from two result files of this script."""
    before = json.loads(before_path.read_text())
    after = json.loads(after_path.read_text())
    for r in (before, after):  # recomputed from the samples, so older summaries read the same
        r["result"] = summarize(r["runs"])

    def fmt(x: float) -> str:
        return f"{x:.3g}" if x < 1000 else f"{x:.0f}"

    def med_range(r: dict, key: str) -> str:
        lo, hi = r[f"{key}_range"]
        if key.startswith("ratio"):
            return f"{r[key]:.2f} ({lo:.2f}-{hi:.2f})"
        return f"{fmt(r[key])} ({fmt(lo)}-{fmt(hi)})"

    rows = [
        "| bench | policy (params) | env steps / iter | before: steps/s | after: steps/s | "
        "raw after / before | before: x baseline | after: x baseline | "
        "load-corrected after / before |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in after["result"].items():
        b = before["result"].get(name)
        if b is None:  # a bench the old tree lacks
            rows.append(
                f"| {name} | {a['policy']['kind']} ({a['policy']['params']}) | "
                f"{a['env_steps_per_iteration']} | - | {med_range(a, 'steps_per_second')} | - | "
                f"- | {med_range(a, 'ratio_vs_baseline')} | - |"
            )
            continue
        corrected = "n/a"
        if a["ratio_vs_anchor"] and b["ratio_vs_anchor"]:
            mid, lo, hi = corrected_speedup(b["ratios_vs_anchor"], a["ratios_vs_anchor"])
            corrected = f"{mid:.2f}x ({lo:.2f}-{hi:.2f})"
        rows.append(
            f"| {name} | {a['policy']['kind']} ({a['policy']['params']}) | "
            f"{a['env_steps_per_iteration']} | {med_range(b, 'steps_per_second')} | "
            f"{med_range(a, 'steps_per_second')} | "
            f"{a['steps_per_second'] / b['steps_per_second']:.2f}x | "
            f"{med_range(b, 'ratio_vs_baseline')} | {med_range(a, 'ratio_vs_baseline')} | "
            f"{corrected} |"
        )
    lines = [
        "# End-to-end training throughput: before / after this round's speed work",
        "",
        "Env steps per second of whole training iterations (collection, advantages, update; all "
        "sub-envs counted), median over interleaved repeats with the min-max in brackets, from "
        "`experiments/bench_train.py`. `x baseline`: the median over repeats of sps(bench) / "
        "sps(the CleanRL-style GRU PPO on nav2d, `cleanrl_gru/ppo/nav2d`) measured in the same "
        "repeat. `load-corrected after / before`: the same ratio taken against the baseline on "
        "gymnasium's `SyncVectorEnv` (the same code and env in both trees: "
        "`cleanrl_gru/ppo/nav2d/sync` after, `cleanrl_gru/ppo/nav2d` before), after over before; "
        "the raw after / before mixes in the machine's load, which changed between the runs. In "
        "brackets: 95% bootstrap interval (per-repeat ratios resampled in each tree).",
        "",
        f"Table: `{shlex.join(['python', *sys.argv])}`",
        "",
        *rows,
        "",
    ]
    for name in [n for n in after["result"] if n.endswith("+fused_step")]:
        plain = name.removesuffix("+fused_step")
        paired = [
            (s["env_steps"] / s["seconds"]) / (p["env_steps"] / p["seconds"])
            for run in after["runs"]
            for s, p in zip(run["samples"][name], run["samples"][plain])
        ]
        lines.append(
            f"{name} / {plain} (after, per-repeat pairs): median "
            f"{statistics.median(paired):.2f}x (range {min(paired):.2f}-{max(paired):.2f})."
        )
        lines.append("")
    for n in [n for n in after["result"] if n.startswith("maml/") and n in before["result"]]:
        sb, sa = before["result"][n], after["result"][n]
        lines.append(
            f"{n}: {sb['seconds_per_iteration']:.1f} s before, {sa['seconds_per_iteration']:.1f} "
            f"s after per outer iteration (raw medians, load included; "
            f"{sa['env_steps_per_iteration']} env steps each, support and query); the "
            "load-corrected column is the figure to read."
        )
    lines += [
        "",
        "Caveats:",
        "",
        "- The machine (2 cores) was shared with other jobs and its load changed within and "
        "between runs: single samples of the same bench differ up to ~3x (the ranges above). "
        "Hence interleaved repeats, medians, per-repeat ratios against a baseline timed in the "
        "same repeat, and before/after runs alternated (before, after, before, after; "
        "`--append` pools them). Differences under ~10-15% are within the noise.",
        "- Only the `ppo/nav2d` rows are like for like with the baseline (same env, sizes and "
        "update). RL² bandit (64 trials x 100 steps) and MAML nav2d (400 envs, a smaller "
        "policy, no-grad collection batched over all tasks) are other workloads; their "
        "`x baseline` only places them on the same scale.",
        "- The baseline's throughput is what is compared, not its learning: with CleanRL's unit "
        "initial action std on nav2d's +-0.1 actions it barely learns in this budget.",
        "- Threads: `--threads` (torch intra-op) for every bench; the fused C++ kernels were "
        "built once per tree in a private `TORCH_EXTENSIONS_DIR`, during the untimed warm-up.",
        *[f"- {note}" for note in notes],
    ]
    for label, r, path in (("before", before, before_path), ("after", after, after_path)):
        lines += [
            "",
            f"## {label}",
            "",
            f"- code: `{r['code']['root']}` at `{r['commit']}` ({r['code']['subject']})",
            f"- script: `{r['script_commit']}`",
            f"- machine: {r['machine']}",
            f"- settings: {r['settings']}",
            "- vector envs (PPO benches): "
            + ", ".join(
                f"{k}: {v['vector_env']}" for k, v in r["result"].items() if v["vector_env"]
            ),
            f"- results: `{path.name}` ({len(r['runs'])} runs)",
        ]
        for run in r["runs"]:
            load = ", ".join(f"{x:.1f}" for x in run["loadavg_start_end"])
            env = " ".join(f"{k}={v}" for k, v in run["environment"].items())
            lines.append(
                f"  - `{env + ' ' if env else ''}{run['command']}`: {run['wall_seconds']:.0f} s "
                "wall, load average "
                f"(1 min) {load} at start, end"
            )
    write_text_atomic(md, "\n".join(lines) + "\n")
    print(f"wrote {md}")


def write_text_atomic(path: Path, text: str) -> None:
    from ssm.util import write_text_atomic as write

    write(path, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (all benches)")
    ap.add_argument("--repeats", type=int, default=3, help="timed, interleaved repeats")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=[], help="bench names (the baseline always runs)")
    ap.add_argument("--ppo-envs", type=int, default=16, help="PPO nav2d num_envs (both PPOs)")
    ap.add_argument("--ppo-steps", type=int, default=128, help="PPO nav2d num_steps")
    ap.add_argument("--epochs", type=int, default=4, help="PPO update_epochs")
    ap.add_argument("--minibatches", type=int, default=4, help="PPO num_minibatches")
    ap.add_argument("--ppo-iters", type=int, default=2, help="PPO iterations per timed sample")
    ap.add_argument("--rl2-envs", type=int, default=64, help="RL² trials per iteration")
    ap.add_argument("--rl2-iters", type=int, default=1, help="RL² iterations per timed sample")
    ap.add_argument("--maml-tasks", type=int, default=20, help="MAML meta-batch size")
    ap.add_argument("--maml-episodes", type=int, default=20, help="MAML trajectories per task")
    ap.add_argument("--maml-iters", type=int, default=1, help="MAML iterations per timed sample")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dotted TrainConfig override for every framework bench (repeatable)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny budgets, one repeat (smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON path")
    ap.add_argument(
        "--append",
        action="store_true",
        help="add this run to --out's runs (same code and settings) and summarise them all",
    )
    ap.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("BEFORE", "AFTER"),
        help="write a before/after table from two result files (no measuring)",
    )
    ap.add_argument("--note", action="append", default=[], help="a caveat line for --compare")
    ap.add_argument("--md", type=Path, default=HERE / "results" / "bench_train.md")
    args = ap.parse_args()
    if args.compare:
        write_compare(*args.compare, args.md, args.note)
        return 0
    for name in ("threads", "repeats", "ppo_envs", "ppo_steps", "epochs", "minibatches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.repeats, args.ppo_envs, args.ppo_steps, args.ppo_iters = 1, 4, 16, 1
        args.rl2_envs, args.maml_tasks, args.maml_episodes = 4, 2, 2
    out = args.out or HERE / "results" / (
        "bench_train_quick.json" if args.quick else "bench_train.json"
    )
    report = write_report(out, measure(args), args.append)
    for name, r in report["result"].items():
        anchor = r["ratio_vs_anchor"]
        print(
            f"{name:26s} {r['steps_per_second']:9.0f} steps/s  {r['seconds_per_iteration']:7.2f} "
            f"s/iter  x{r['ratio_vs_baseline']:.2f} vs baseline"
            + (f"  x{anchor:.2f} vs sync baseline" if anchor else "")
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
