"""A population run, end to end: config in, run directory out.

:func:`train_population` builds the game and one :class:`MultiAgentLearner` per PBT member
(:class:`PopulationTrainer`), trains them side by side (one iteration each, in turn), logs every
iteration to ``metrics.jsonl`` (the best member's numbers as the headline, every member's return
and hyperparameters beside them), runs the emergence analysis every ``analysis.every``
iterations, applies PBT, checkpoints, and finally evaluates the best member into ``eval.json`` and
draws ``plots/``.

**Resuming.** The loop is the one harness's (:func:`metarl.harness.run_loop`). Every
``run.checkpoint_every`` iterations (and whenever a run stops: ``run.stop_after``,
``run.time_limit_minutes``, SIGINT/SIGTERM) an atomic, weights-only checkpoint
(:meth:`RunDir.save_checkpoint`) stores the trainer's whole
state: every member's parameters, optimiser, hyperparameters, self-play pool, generator and
counter, the emergence and fitness windows, PBT's generator, and the global RNG states.
:func:`resume_population` (``metarl population --resume RUN_DIR``) loads the latest readable one,
drops the metrics rows logged after it and continues; the run then ends with the same metrics
rows (timing columns aside) and bit-identical parameters as one never interrupted (tested, with
PBT on).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssm.util import mean_ci, write_atomic

from ..cli_args import check_resume_overrides
from ..harness import restore, run_loop, seed_everything
from ..run_dir import RunDir
from ..tracking import Tracker
from .analysis import (
    behavioural_diversity,
    episode_roles,
    role_consistency,
    role_counts,
    skill_usage,
    specialisation_index,
)
from .batch import MultiAgentBatch
from .config import EnvConfig, PopulationConfig
from .envs import MultiAgentEnv, RoleGathering
from .learner import MultiAgentLearner, seeds_for
from .pbt import PBT
from .skill_source import skill_source_opener

log = logging.getLogger(__name__)

__all__ = [
    "Emergence",
    "PopulationTrainer",
    "build_env",
    "evaluate_learner",
    "open_for_resume",
    "resume_population",
    "train_population",
]

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
        """Specialisation index, role consistency and role counts over the window; diversity on
        ``batch``'s states; skill usage fractions per option agent."""
        out: dict[str, Any] = {}
        if self.n_roles and self.roles:
            counts = np.sum(list(self.roles), axis=0)
            out["specialisation_index"] = specialisation_index(counts)
            out["role_consistency"] = role_consistency(counts)
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

    def state_dict(self) -> dict[str, list]:
        return {
            "roles": [torch.from_numpy(c) for c in self.roles],
            "skills": [torch.from_numpy(c) for c in self.skills],
        }

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.roles.clear()
        self.roles.extend(c.numpy() for c in state["roles"])
        self.skills.clear()
        self.skills.extend(c.numpy() for c in state["skills"])


def _scalars(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if isinstance(v, int | float | bool | str) or v is None}


def evaluate_learner(learner: MultiAgentLearner, episodes: int, seed: int) -> dict[str, Any]:
    """Play ``episodes`` episodes with the current parameters on every side (sampled actions) and
    report returns (mean ± Student-t 95% CI over episodes) and the emergence statistics."""
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
        "episodic_return": mean_ci(returns["team0"]),
        "team_returns": {k: mean_ci(v) for k, v in returns.items()},
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
        "emergence.png": ["specialisation_index", "role_consistency", "diversity"],
        "pbt.png": sorted(k for k in logged if k.startswith("member")),
    }
    for name, keys in panels.items():
        keys = [k for k in keys if k in logged]
        if keys:
            run.plot_metrics(keys, name)
    _plot_skills(run, records)


class PopulationTrainer:
    """The state of a population run between iterations: the PBT members, their emergence and
    fitness windows, PBT's schedule and the iteration counter; :meth:`step` runs one iteration."""

    def __init__(self, cfg: PopulationConfig):
        self.cfg = cfg
        self.remote = None  # RayMembers when backend=ray: members and their windows live on actors
        self.emergence: list[Emergence] = []
        if cfg.backend == "ray":
            from .ray_members import RayMembers

            self.remote = RayMembers(cfg, cfg.ray)
            self.members: list[Any] = list(self.remote.members)
        else:
            self.members = [
                MultiAgentLearner(cfg, build_env(cfg.env), seed=cfg.seed * 101 + m)
                for m in range(cfg.pbt.members)
            ]
            self.emergence = [Emergence(m, cfg.analysis.window) for m in self.members]
        self.recent: list[deque[float]] = [deque(maxlen=cfg.pbt.window) for _ in self.members]
        self.pbt = PBT(cfg.pbt, cfg.seed) if cfg.pbt.members > 1 else None
        self.steps_per_iteration = cfg.env.num_envs * cfg.env.episode_len
        self.iterations = cfg.iterations
        self.iteration = 0

    @property
    def done(self) -> bool:
        return self.iteration >= self.cfg.iterations

    @property
    def global_step(self) -> int:
        return self.iteration * self.steps_per_iteration

    def best(self) -> int:
        """The member with the highest fitness (mean return over its recent iterations)."""
        fitness = self.fitness()
        return int(np.nanargmax(fitness)) if any(math.isfinite(f) for f in fitness) else 0

    def fitness(self) -> list[float]:
        return [float(np.nanmean(r)) if len(r) else math.nan for r in self.recent]

    def step(self) -> dict[str, Any]:
        """One iteration of every member, the analysis when due, PBT when due; the logged row.
        A non-finite loss raises ``FloatingPointError`` naming the member."""
        cfg, it = self.cfg, self.iteration + 1
        seeds = [
            seeds_for(cfg.seed * 101 + m, it, cfg.env.num_envs) for m in range(len(self.members))
        ]
        batches = []
        if self.remote is not None:
            rows = self.remote.train_iteration(seeds)  # in parallel, one actor per member
        else:
            rows = []
            for m, (learner, seed) in enumerate(zip(self.members, seeds)):
                try:
                    row, batch = learner.train_iteration(seed)
                except FloatingPointError as e:
                    raise FloatingPointError(f"member {m}: {e}") from e
                rows.append(row)
                batches.append(batch)
                self.emergence[m].add(batch)
        for m, row in enumerate(rows):
            self.recent[m].append(row["episodic_return"])
        self.iteration = it
        fitness = self.fitness()
        best = self.best()
        out = dict(rows[best])
        out["iteration"] = it
        if it % cfg.analysis.every == 0 or it == cfg.iterations:
            if self.remote is not None:
                out.update(self.remote.metrics(best, cfg.analysis.diversity_envs))
            else:
                batch = batches[best].select(
                    torch.arange(min(cfg.analysis.diversity_envs, cfg.env.num_envs))
                )
                out.update(self.emergence[best].metrics(batch))
        if self.pbt is not None:
            out["best_member"] = best
            for m, row in enumerate(rows):
                out[f"member{m}/episodic_return"] = row["episodic_return"]
                out[f"member{m}/learning_rate"] = row["learning_rate"]  # the member's hparams
                out[f"member{m}/ent_coef"] = row["ent_coef"]  # (no round trip to a Ray actor)
            if self.pbt.due(it):
                events = self.pbt.step(self.members, fitness)
                out["pbt/exploits"] = len(events)
                for ev in events:
                    log.info("PBT at iteration %d: %s", it, ev)
                    self.recent[ev["target"]].clear()
        return _scalars(out)

    def state_dict(self) -> dict[str, Any]:
        """Everything the next iterations depend on (a weights-only checkpoint's content)."""
        if self.remote is not None:
            states = self.remote.state_dicts()
            members = [s["learner"] for s in states]
            emergence = [s["emergence"] for s in states]
        else:
            members = [m.state_dict() for m in self.members]
            emergence = [e.state_dict() for e in self.emergence]
        return {
            "iteration": self.iteration,
            "members": members,
            "emergence": emergence,
            "recent": [list(r) for r in self.recent],
            "pbt": self.pbt.state_dict() if self.pbt is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"iteration", "members", "emergence", "recent", "pbt"} - set(state)
        if missing:
            raise ValueError(
                f"the checkpoint lacks {sorted(missing)}: it predates resumable population runs"
            )
        if len(state["members"]) != len(self.members):
            raise ValueError(
                f"the checkpoint has {len(state['members'])} PBT members, the config "
                f"{len(self.members)}"
            )
        if self.remote is not None:
            self.remote.load_state_dicts(
                [
                    {"learner": sd, "emergence": em}
                    for sd, em in zip(state["members"], state["emergence"])
                ]
            )
        else:
            for learner, sd in zip(self.members, state["members"]):
                learner.load_state_dict(sd)
            for emergence, sd in zip(self.emergence, state["emergence"]):
                emergence.load_state_dict(sd)
        for recent, values in zip(self.recent, state["recent"]):
            recent.clear()
            recent.extend(float(v) for v in values)
        if self.pbt is not None:
            self.pbt.load_state_dict(state["pbt"])
        self.iteration = int(state["iteration"])

    def evaluate(self, member: int, episodes: int, seed: int) -> dict[str, Any]:
        """The final evaluation of one member (on its actor when backend=ray)."""
        if self.remote is not None:
            return self.members[member].evaluate(episodes, seed)
        return evaluate_learner(self.members[member], episodes, seed)

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()
            return
        for m in self.members:
            m.env.close()


def train_population(
    cfg: PopulationConfig, run: RunDir | None = None, resume: bool = False
) -> tuple[RunDir, dict[str, Any] | None]:
    """Train the population ``cfg`` describes into ``run`` (default: a new run directory under
    ``cfg.run.root``; ``resume``: continue ``run`` from its latest checkpoint). Returns the run
    and the final evaluation (also in ``eval.json``), or None for the evaluation when
    ``run.stop_after`` stopped the run early."""
    if cfg.backend == "ray":
        from ..backends import require_ray
        from ..config import ConfigError

        try:
            require_ray()  # before anything is written
        except ImportError as e:
            raise ConfigError(str(e)) from e
    if any(a.options or a.init_skill for a in cfg.agents):
        skill_source_opener(cfg.skills.source)  # no provider: fail before anything is written
    if run is None:
        if resume:
            raise ValueError("resume=True needs the run directory to continue")
        run = RunDir.create(cfg.run.root, cfg.run.name, cfg, cfg.seed)
    return _run(cfg, run, resuming=resume)


def open_for_resume(
    run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[RunDir, PopulationConfig]:
    """The run directory and its config with ``overrides``, which may change only ``run.*`` and
    ``logging.*`` settings (e.g. ``run.stop_after=null``); raises ``ConfigError`` otherwise."""
    run = RunDir.open(run_dir, expect="population")
    return run, run.load_config(PopulationConfig, check_resume_overrides(overrides))


def resume_population(
    run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[RunDir, dict[str, Any] | None]:
    """Continue the run in ``run_dir`` from its latest readable checkpoint (from the start if it
    was killed before the first one); see :func:`open_for_resume` for ``overrides``."""
    run, cfg = open_for_resume(run_dir, overrides)
    return train_population(cfg, run, resume=True)


def _run(
    cfg: PopulationConfig, run: RunDir, resuming: bool
) -> tuple[RunDir, dict[str, Any] | None]:
    torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.seed)
    trainer = PopulationTrainer(cfg)
    if resuming:
        restore(run, trainer)
    tracker = Tracker(
        run, cfg.logging, cfg.iterations, trainer.iteration, run_config=cfg, resume=resuming
    )
    results: list[dict[str, Any]] = []

    def finish() -> None:
        best = trainer.best()
        learner = trainer.members[best]
        out = trainer.evaluate(best, cfg.eval_episodes, seed=10**6 + cfg.seed)
        out["best_member"] = best
        out["hparams"] = dict(learner.hparams)
        out["init_from_skills"] = learner.init_report
        write_atomic(run.path / EVAL_FILE, (json.dumps(out, indent=2) + "\n").encode())
        _plot_all(run)
        tracker.summary({f"eval/{k}": v["mean"] for k, v in out["team_returns"].items()})
        results.append(out)

    run_loop(run, trainer, cfg.run, tracker, finish)
    return run, (results[0] if results else None)
