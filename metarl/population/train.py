"""A population run, end to end: config in, run directory out.

:func:`train_population` builds the game and one :class:`MultiAgentLearner` per PBT member, trains
them side by side (one iteration each, in turn), logs every iteration to ``metrics.jsonl`` (the
best member's numbers as the headline, every member's return and hyperparameters beside them),
runs the emergence analysis every ``analysis.every`` iterations, applies PBT, checkpoints, and
finally evaluates the best member into ``eval.json`` and draws ``plots/``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import write_atomic
from ..run_dir import RunDir, capture_rng_state
from ..tracking import Tracker
from .analysis import (
    behavioural_diversity,
    episode_roles,
    role_counts,
    role_mutual_information,
    skill_usage,
    specialisation_index,
)
from .batch import MultiAgentBatch
from .config import EnvConfig, PopulationConfig
from .envs import MultiAgentEnv, RoleGathering
from .learner import MultiAgentLearner, seeds_for
from .pbt import PBT

log = logging.getLogger(__name__)

__all__ = ["Emergence", "build_env", "evaluate_learner", "train_population"]

STATUS_FILE = "status.json"
EVAL_FILE = "eval.json"


def build_env(cfg: EnvConfig) -> MultiAgentEnv:
    """The batched game ``cfg`` names."""
    kw = dict(cfg.kwargs)
    if cfg.name == "role_gathering":
        return RoleGathering(cfg.num_envs, max_steps=cfg.episode_len, **kw)
    from .pettingzoo_env import make_simple_spread, make_simple_tag

    if cfg.name == "simple_spread":
        return make_simple_spread(cfg.num_envs, cfg.episode_len, **kw)
    if cfg.name == "simple_tag":
        return make_simple_tag(cfg.num_envs, cfg.episode_len, **kw)
    raise ValueError(f"unknown game {cfg.name!r}")


class Emergence:
    """Role and skill statistics of one learner over a window of recent iterations."""

    def __init__(self, learner: MultiAgentLearner, window: int):
        self.learner = learner
        self.n_roles = learner.env.n_roles
        self.roles: deque[np.ndarray] = deque(maxlen=window)
        self.skills: deque[np.ndarray] = deque(maxlen=window)

    def add(self, batch: MultiAgentBatch) -> None:
        if self.n_roles:
            dominant = episode_roles(batch.roles, self.n_roles)
            dominant = np.where(batch.trainable.numpy(), dominant, -1)
            self.roles.append(role_counts(dominant, self.n_roles))
        if self.learner.skills is not None:
            self.skills.append(skill_usage(batch.actions, batch.decided, len(self.learner.skills)))

    def metrics(self, batch: MultiAgentBatch | None = None) -> dict[str, Any]:
        """SI, role MI and role coverage over the window; diversity on ``batch``'s states; skill
        usage fractions per option agent."""
        out: dict[str, Any] = {}
        if self.n_roles and self.roles:
            counts = np.sum(list(self.roles), axis=0)
            out["specialisation_index"] = specialisation_index(counts)
            out["role_mi"] = role_mutual_information(counts)
            out["role_counts"] = counts.tolist()
        if batch is not None:
            out["diversity"] = behavioural_diversity(self.learner, batch.obs, batch.alive)
        if self.learner.skills is not None and self.skills:
            usage = np.sum(list(self.skills), axis=0).astype(np.float64)
            names = self.learner.skills.names
            option_slots = [
                i
                for i in range(self.learner.n_agents)
                if self.learner.option_groups[self.learner.group_of[i]]
            ]
            for i in option_slots:
                total = usage[i].sum()
                for j, name in enumerate(names):
                    out[f"skills/agent{i}/{name}"] = usage[i, j] / total if total else math.nan
        return out


def _scalars(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if isinstance(v, int | float | bool | str) or v is None}


def _ci95(x: list[float]) -> dict[str, float]:
    a = np.asarray([v for v in x if math.isfinite(v)], np.float64)
    if len(a) == 0:
        return {"mean": math.nan, "ci95": math.nan, "n": 0}
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else math.nan
    return {"mean": float(a.mean()), "ci95": float(half), "n": int(len(a))}


def evaluate_learner(learner: MultiAgentLearner, episodes: int, seed: int) -> dict[str, Any]:
    """Play ``episodes`` episodes with the current parameters on every side (sampled actions) and
    report returns (mean ± 95% CI over episodes) and the emergence statistics."""
    emergence = Emergence(learner, window=10**6)
    returns: dict[str, list[float]] = {}
    last = None
    played = 0
    while played < episodes:
        batch = learner.collect(seed + played, use_pool=False)
        emergence.add(batch)
        per_ep = batch.episode_returns()
        present = batch.present()
        for team in range(int(learner.teams.max()) + 1):
            slots = (learner.teams == team).nonzero().flatten()
            p = present[:, slots]
            team_ret = (per_ep[:, slots] * p).sum(1) / p.sum(1).clamp(min=1)
            returns.setdefault(f"team{team}", []).extend(team_ret[p.any(1)].tolist())
        played += batch.B
        last = batch
    out: dict[str, Any] = {
        "episodes": played,
        "episodic_return": _ci95(returns["team0"]),
        "team_returns": {k: _ci95(v) for k, v in returns.items()},
    }
    out.update(emergence.metrics(last))
    if learner.skills is not None:
        out["skill_names"] = list(learner.skills.names)
    return out


def _plot_skills(run: RunDir, records: list[dict]) -> Path | None:
    keys = sorted({k for r in records for k in r if k.startswith("skills/")})
    if not keys:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    agents = sorted({k.split("/")[1] for k in keys})
    fig = Figure(figsize=(6, 2.4 * len(agents)))
    FigureCanvasAgg(fig)
    for a, agent in enumerate(agents):
        ax = fig.add_subplot(len(agents), 1, a + 1)
        for key in (k for k in keys if k.split("/")[1] == agent):
            pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key.split("/", 2)[2])
        ax.set_ylabel(f"{agent} usage")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_atomic(run.plot_dir / "skills.png", buf.getvalue())


def _plot_all(run: RunDir) -> None:
    records = run.read_metrics()
    logged = {k for r in records for k in r}
    panels = {
        "training.png": [
            "episodic_return",
            "return/team1",
            "value_loss",
            "entropy",
            "approx_kl",
            "explained_variance",
        ],
        "emergence.png": ["specialisation_index", "role_mi", "diversity"],
        "pbt.png": sorted(k for k in logged if k.startswith("member")),
    }
    for name, keys in panels.items():
        keys = [k for k in keys if k in logged]
        if keys:
            run.plot_metrics(keys, name)
    _plot_skills(run, records)


def _status(run: RunDir, status: str, iteration: int, total: int, message: str | None = None):
    body = {"status": status, "iteration": iteration, "iterations": total, "message": message}
    write_atomic(run.path / STATUS_FILE, (json.dumps(body, indent=2) + "\n").encode())


def train_population(
    cfg: PopulationConfig, run: RunDir | None = None
) -> tuple[RunDir, dict[str, Any]]:
    """Train the population ``cfg`` describes into ``run`` (default: a new run directory under
    ``cfg.run.root``); returns the run and the final evaluation (also in ``eval.json``)."""
    torch.set_num_threads(cfg.run.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)  # noqa: NPY002 (seeds third-party code that uses it)
    torch.manual_seed(cfg.seed)
    if run is None:
        run = RunDir.create(cfg.run.root, cfg.run.name, cfg, cfg.seed)
    members = [
        MultiAgentLearner(cfg, build_env(cfg.env), seed=cfg.seed * 101 + m)
        for m in range(cfg.pbt.members)
    ]
    emergence = [Emergence(m, cfg.analysis.window) for m in members]
    recent = [deque(maxlen=cfg.pbt.window) for _ in members]
    pbt = PBT(cfg.pbt, cfg.seed) if cfg.pbt.members > 1 else None
    steps_per_iteration = cfg.env.num_envs * cfg.env.episode_len
    tracker = Tracker(run, cfg.logging, cfg.iterations, run_config=cfg)
    _status(run, "running", 0, cfg.iterations)
    exit_code = 1
    try:
        for it in range(1, cfg.iterations + 1):
            rows, batches = [], []
            for m, learner in enumerate(members):
                seed = seeds_for(cfg.seed * 101 + m, it, cfg.env.num_envs)
                try:
                    row, batch = learner.train_iteration(seed)
                except FloatingPointError as e:
                    _status(run, "diverged", it, cfg.iterations, f"member {m}: {e}")
                    raise
                rows.append(row)
                batches.append(batch)
                recent[m].append(row["episodic_return"])
                emergence[m].add(batch)
            fitness = [float(np.nanmean(r)) if len(r) else math.nan for r in recent]
            best = int(np.nanargmax(fitness)) if any(math.isfinite(f) for f in fitness) else 0
            out = dict(rows[best])
            out["iteration"] = it
            if it % cfg.analysis.every == 0 or it == cfg.iterations:
                batch = batches[best].select(
                    torch.arange(min(cfg.analysis.diversity_envs, cfg.env.num_envs))
                )
                out.update(emergence[best].metrics(batch))
            if pbt is not None:
                out["best_member"] = best
                for m, row in enumerate(rows):
                    out[f"member{m}/episodic_return"] = row["episodic_return"]
                    out[f"member{m}/learning_rate"] = members[m].hparams["learning_rate"]
                    out[f"member{m}/ent_coef"] = members[m].hparams["ent_coef"]
                if pbt.due(it):
                    events = pbt.step(members, fitness)
                    out["pbt/exploits"] = len(events)
                    for ev in events:
                        log.info("PBT at iteration %d: %s", it, ev)
                        recent[ev["target"]].clear()
            tracker.log(it * steps_per_iteration, _scalars(out))
            if it % cfg.run.checkpoint_every == 0 or it == cfg.iterations:
                state = {
                    "iteration": it,
                    "members": [m.state_dict() for m in members],
                    "rng": capture_rng_state(),
                }
                run.save_checkpoint(it * steps_per_iteration, state, keep=cfg.run.keep_checkpoints)
        fitness = [float(np.nanmean(r)) if len(r) else math.nan for r in recent]
        best = int(np.nanargmax(fitness)) if any(math.isfinite(f) for f in fitness) else 0
        results = evaluate_learner(members[best], cfg.eval_episodes, seed=10**6 + cfg.seed)
        results["best_member"] = best
        results["hparams"] = dict(members[best].hparams)
        results["init_from_skills"] = members[best].init_report
        write_atomic(run.path / EVAL_FILE, (json.dumps(results, indent=2) + "\n").encode())
        _plot_all(run)
        tracker.summary({f"eval/{k}": v["mean"] for k, v in results["team_returns"].items()})
        _status(run, "finished", cfg.iterations, cfg.iterations)
        exit_code = 0
        return run, results
    finally:
        tracker.close(exit_code)
        for m in members:
            m.env.close()
