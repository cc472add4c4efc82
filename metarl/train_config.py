"""The configuration of a training run (``metarl train CONFIG.yaml key=value ...``): the policy,
the run directory, the evaluation, and the algorithms' settings, as typed dataclasses.

They live apart from :mod:`metarl.runner` so that other layers (``continual``'s sequence config)
can reuse :class:`PolicyConfig` and :class:`RunConfig` without importing the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ssm.policy import SequencePolicy
from ssm.registry import KINDS

from .backends import RayConfig
from .config import check_bounds
from .meta import MetaConfig
from .ppo import PPOConfig
from .rl2 import RL2Config
from .tasks import TaskFamily, make_family
from .tracking import LoggingConfig

__all__ = ["EvalConfig", "PolicyConfig", "RunConfig", "TrainConfig", "build_family", "build_policy"]


@dataclass
class PolicyConfig:
    """The sequence policy (see ``ssm.SequencePolicy``)."""

    kind: str = "mamba"
    """sequence layer: mamba, mamba2, s4d, s5, gru or lstm"""
    d_model: int = 64
    """width of the residual stream"""
    n_layers: int = 2
    """number of sequence layers"""
    encoder_hidden: int = 128
    """hidden width of the observation encoder"""
    box_head: Literal["gaussian", "tanh"] = "gaussian"
    """action head for continuous actions"""
    layer: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments for the layer (e.g. d_state, backend)"""
    norm: Literal["pre", "post", "none"] = "pre"
    """LayerNorm placement in the residual stack: pre x + f(norm(x)), post norm(x + f(x)), none"""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        check_bounds(self, positive=("d_model", "n_layers", "encoder_hidden"))

    def build(self, observation_space, action_space, in_context: bool) -> SequencePolicy:
        """The policy this config describes, for the given spaces."""
        return SequencePolicy(
            observation_space,
            action_space,
            kind=self.kind,
            d_model=self.d_model,
            n_layers=self.n_layers,
            in_context=in_context,
            box_head=self.box_head,
            encoder_hidden=self.encoder_hidden,
            layer_kwargs=dict(self.layer),
            norm=self.norm,
        )


@dataclass
class RunConfig:
    """Where the run directory goes and how often it is checkpointed."""

    root: str = "runs"
    """folder that holds run directories"""
    name: str | None = None
    """run name prefix (default: a timestamp)"""
    checkpoint_every: int = 10
    """iterations between checkpoints (the last iteration is always checkpointed)"""
    keep_checkpoints: int = 3
    """checkpoints kept on disk"""
    threads: int | None = None
    """torch intra-op threads (default: torch's choice)"""
    stop_after: int | None = None
    """stop (resumably) after this many iterations in this process; for tests and time slicing"""
    time_limit_minutes: float | None = None
    """stop (resumably, checkpointed) once an iteration ends past this much wall time"""

    def __post_init__(self) -> None:
        check_bounds(
            self,
            positive=("keep_checkpoints", "threads", "stop_after", "time_limit_minutes"),
            nonnegative=("checkpoint_every",),
        )


@dataclass
class EvalConfig:
    """The evaluation at the end of training and of ``metarl eval``."""

    tasks: int = 200
    """held-out tasks, one trial each"""
    split: Literal["train", "test"] = "test"
    """which split the tasks come from"""
    seed: int = 12345
    """seed of the task sample and the evaluation rollouts"""
    deterministic: bool = False
    """act greedily instead of sampling (rl2/ppo; adaptation needs sampled episodes)"""
    adapt_steps: int | None = None
    """maml runs: gradient steps of the adaptation evaluation (None: meta.inner_steps)"""
    seeds: int = 1
    """maml runs: rollout seeds per task (eval.seed, eval.seed + 1, ...)"""

    def __post_init__(self) -> None:
        check_bounds(self, positive=("tasks", "seeds"), nonnegative=("adapt_steps",))


@dataclass
class TrainConfig:
    """One training run: ``metarl train CONFIG.yaml key=value ...``."""

    algo: Literal["rl2", "ppo", "maml"] = "rl2"
    """rl2: in-context meta-RL over trials; ppo: multi-task PPO over num_envs train tasks;
    maml: gradient meta-RL (meta.algo: maml, fomaml, imaml or reptile)"""
    family: str = "bandit"
    """task family spec, e.g. bandit, nav2d, cartpole, metaworld-ml1:reach-v3"""
    family_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the family (e.g. k, horizon)"""
    max_episode_steps: int | None = None
    """episode length override for any family (None: the family's own)"""
    seed: int = 1
    """the run's one seed (it overrides rl2.seed, ppo.seed and meta.seed)"""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """the sequence policy"""
    rl2: RL2Config = field(default_factory=RL2Config)
    """RL² settings (algo=rl2)"""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO settings (algo=ppo)"""
    meta: MetaConfig = field(default_factory=MetaConfig)
    """gradient meta-learner settings (algo=maml; meta.iterations counts outer iterations)"""
    run: RunConfig = field(default_factory=RunConfig)
    """run directory and checkpoints"""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """wandb and the progress bar"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """evaluation on held-out tasks"""
    backend: Literal["local", "ray"] = "local"
    """where rollouts run (rl2, maml): in this process, or in task slices on Ray actors"""
    ray: RayConfig = field(default_factory=RayConfig)
    """the Ray backend (backend=ray): cluster address, workers, fault tolerance"""


def build_family(cfg: TrainConfig) -> TaskFamily:
    family = make_family(cfg.family, **cfg.family_kwargs)
    if cfg.max_episode_steps is not None:
        if cfg.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {cfg.max_episode_steps}")
        family.max_episode_steps = cfg.max_episode_steps
    return family


def build_policy(cfg: TrainConfig, family: TaskFamily) -> SequencePolicy:
    return cfg.policy.build(family.observation_space, family.action_space, cfg.algo == "rl2")
