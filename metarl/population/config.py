"""The population's typed config: ``metarl population CONFIG.yaml key=value ...``.

Every field carries a one-line docstring (``metarl population --docs`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..backends.config import RayConfig
from ..tracking import LoggingConfig, WandbMode

__all__ = [
    "AgentSpec",
    "AnalysisConfig",
    "CommConfig",
    "CriticConfig",
    "EnvConfig",
    "MAPPOConfig",
    "PBTConfig",
    "PopulationConfig",
    "PopulationLoggingConfig",
    "PopulationRunConfig",
    "SelfPlayConfig",
    "SkillConfig",
]


@dataclass
class EnvConfig:
    """The game and how many copies of it are played at once."""

    name: Literal["role_gathering", "simple_spread", "simple_tag"] = "role_gathering"
    """role_gathering (built-in), simple_spread (mpe2, cooperative) or simple_tag (competitive)"""
    num_envs: int = 8
    """parallel copies B (episodes per iteration)"""
    episode_len: int = 25
    """steps per episode (= the training sequence length T)"""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the game (e.g. n_agents, n_resources, death_rate, min_agents, N)"""


@dataclass
class AgentSpec:
    """One agent's actor network (a ``ssm.SequencePolicy`` body)."""

    kind: str = "gru"
    """sequence layer: mamba, s4d, s5, gru or lstm"""
    d_model: int = 32
    """width of the residual stream"""
    n_layers: int = 1
    """number of sequence layers"""
    encoder_hidden: int = 64
    """hidden width of the observation encoder"""
    layer: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments of the layer (e.g. d_state)"""
    init_skill: str | None = None
    """initialise from this library skill (the agent then takes the skill's architecture)"""
    options: bool = False
    """act by choosing a library skill every skills.option_every steps (not primitive actions)"""


@dataclass
class CriticConfig:
    """The centralised critic of MAPPO (a sequence model over the joint observation)."""

    kind: str = "gru"
    """sequence layer of the critic"""
    d_model: int = 64
    """width of the critic's residual stream"""
    n_layers: int = 1
    """number of sequence layers"""
    encoder_hidden: int = 128
    """hidden width of the joint-observation encoder"""
    layer: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments of the layer"""


@dataclass
class CommConfig:
    """The learned communication channel between agents."""

    enabled: bool = False
    """give every agent a message head and an attention reader over the others' messages"""
    mode: Literal["prev", "same"] = "prev"
    """prev: read last step's messages (from recurrent features); same: this step's (encodings)"""
    d_msg: int = 8
    """message size"""
    d_key: int = 16
    """attention key/query size"""
    detach: bool = False
    """treat received messages as data: no gradient flows from a reader into the sender"""
    teammates_only: bool = True
    """agents read only their own team's messages"""


@dataclass
class SkillConfig:
    """Where library skills come from (for AgentSpec.init_skill and AgentSpec.options)."""

    library: str | None = None
    """path of a skill library (skills.SkillLibrary)"""
    source: str = "library"
    """what opens skills.library: a provider of the metarl.skill_sources entry-point group"""
    names: list[str] = field(default_factory=list)
    """the skills offered as options, in order (default: every skill in the library)"""
    option_every: int = 5
    """an option agent chooses a skill every this many steps"""


@dataclass
class SelfPlayConfig:
    """A pool of past snapshots that plays against the learners in competitive games."""

    enabled: bool = False
    """sample each episode's opponents from snapshots of past parameters"""
    snapshot_every: int = 10
    """iterations between snapshots"""
    pool_size: int = 8
    """snapshots kept (oldest dropped first)"""
    p_latest: float = 0.5
    """probability that an episode is played by current parameters on every side"""


@dataclass
class PBTConfig:
    """Population-based training over hyperparameters (Jaderberg et al., 2017)."""

    members: int = 1
    """independent multi-agent learners trained side by side (1: no PBT)"""
    interval: int = 20
    """iterations between exploit/explore steps"""
    fraction: float = 0.25
    """the bottom fraction copies from the top fraction"""
    perturb: tuple[float, float] = (0.8, 1.25)
    """explore: each hyperparameter is multiplied by one of these factors"""
    window: int = 5
    """fitness: mean episodic return over this many recent iterations"""
    lr_bounds: tuple[float, float] = (1e-5, 1e-2)
    """learning rate stays within these bounds"""
    ent_bounds: tuple[float, float] = (1e-4, 0.1)
    """entropy coefficient stays within these bounds"""


@dataclass
class MAPPOConfig:
    """PPO settings of every learner (lr and ent_coef are the starting values under PBT)."""

    learning_rate: float = 1e-3
    """Adam learning rate"""
    ent_coef: float = 0.01
    """entropy bonus weight"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 0.95
    """GAE λ"""
    clip_coef: float = 0.2
    """PPO ratio clip ε"""
    clip_vloss: bool = True
    """clip the value loss too"""
    vf_coef: float = 0.5
    """value loss weight"""
    max_grad_norm: float = 0.5
    """gradient clipping, per network"""
    update_epochs: int = 4
    """passes over each batch"""
    num_minibatches: int = 1
    """minibatches per epoch (whole episodes; must divide env.num_envs)"""
    norm_adv: bool = True
    """normalise advantages per network"""
    bootstrap_truncation: bool = True
    """bootstrap V(final obs) at the time limit (False: treat it as terminal)"""


@dataclass
class AnalysisConfig:
    """The emergence analysis logged during training."""

    every: int = 5
    """iterations between analyses (diversity needs extra forward passes)"""
    window: int = 10
    """iterations of episodes the role statistics pool"""
    diversity_envs: int = 4
    """episodes whose observations are the shared states for behavioural diversity"""


@dataclass
class PopulationRunConfig:
    """Where the run directory goes and how often it is checkpointed."""

    root: str = "runs"
    """folder that holds run directories"""
    name: str | None = None
    """run name prefix (default: a timestamp)"""
    checkpoint_every: int = 50
    """iterations between checkpoints (the last iteration is always checkpointed)"""
    keep_checkpoints: int = 2
    """checkpoints kept on disk"""
    threads: int = 1
    """torch intra-op threads"""
    stop_after: int | None = None
    """stop (checkpointed, resumable) after this many iterations in this process"""
    time_limit_minutes: float | None = None
    """stop (checkpointed, resumable) once an iteration ends past this much wall time"""


@dataclass
class PopulationLoggingConfig(LoggingConfig):
    """Logging destinations besides metrics.jsonl; wandb is off unless asked for."""

    wandb: WandbMode = "disabled"
    """wandb mode: disabled (default), offline or online"""


@dataclass
class PopulationConfig:
    """A multi-agent population run: ``metarl population CONFIG.yaml key=value ...``."""

    algo: Literal["ippo", "mappo"] = "mappo"
    """ippo: each actor's own value head; mappo: a centralised critic on the joint observation"""
    share_params: bool = False
    """one actor network for all agents (uses agents[0])"""
    agent_ids: bool = True
    """append a one-hot agent id to each agent's observation"""
    agents: list[AgentSpec] = field(default_factory=lambda: [AgentSpec()])
    """actor specs; slot i gets agents[i % len(agents)]"""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """the centralised critic (algo=mappo)"""
    iterations: int = 200
    """training iterations (each: env.num_envs episodes, then a PPO update)"""
    seed: int = 1
    """the run's one seed"""
    env: EnvConfig = field(default_factory=EnvConfig)
    """the game"""
    ppo: MAPPOConfig = field(default_factory=MAPPOConfig)
    """PPO settings"""
    comm: CommConfig = field(default_factory=CommConfig)
    """the communication channel"""
    skills: SkillConfig = field(default_factory=SkillConfig)
    """the skill library"""
    selfplay: SelfPlayConfig = field(default_factory=SelfPlayConfig)
    """the self-play opponent pool (competitive games)"""
    pbt: PBTConfig = field(default_factory=PBTConfig)
    """population-based training"""
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    """emergence analysis"""
    eval_episodes: int = 32
    """episodes of the final evaluation"""
    run: PopulationRunConfig = field(default_factory=PopulationRunConfig)
    """run directory and checkpoints"""
    logging: PopulationLoggingConfig = field(default_factory=PopulationLoggingConfig)
    """wandb and the progress bar"""
    backend: Literal["local", "ray"] = "local"
    """where PBT members train: local (in turn, in this process) or ray (one actor per member,
    in parallel; exploit/explore stays in this process)"""
    ray: RayConfig = field(default_factory=RayConfig)
    """the Ray backend (backend=ray): cluster address, CPUs and threads per member actor, restarts
    (ray.num_workers is not used: there is one actor per PBT member)"""

    def __post_init__(self) -> None:
        if not self.agents:
            raise ValueError("agents must list at least one AgentSpec")
        if self.env.num_envs % self.ppo.num_minibatches:
            raise ValueError(
                f"ppo.num_minibatches={self.ppo.num_minibatches} must divide "
                f"env.num_envs={self.env.num_envs} (minibatches are whole episodes)"
            )
        if self.iterations < 1 or self.env.episode_len < 1:
            raise ValueError("iterations and env.episode_len must be >= 1")
        if self.pbt.members < 1:
            raise ValueError(f"pbt.members must be >= 1, got {self.pbt.members}")
        if self.skills.option_every < 1:
            raise ValueError("skills.option_every must be >= 1")
        if self.run.checkpoint_every < 1:
            raise ValueError(f"run.checkpoint_every must be >= 1, got {self.run.checkpoint_every}")
        if self.run.stop_after is not None and self.run.stop_after < 0:
            raise ValueError(f"run.stop_after must be >= 0, got {self.run.stop_after}")
        if self.backend == "ray":
            self.ray.check()
        needs_library = any(a.options or a.init_skill for a in self.agents)
        if needs_library and not self.skills.library:
            raise ValueError("agents with options or init_skill need skills.library")
        if self.share_params and self.agents[0].options != any(a.options for a in self.agents):
            raise ValueError("with share_params, agents[0] decides whether agents use options")
        if not 0.0 <= self.selfplay.p_latest <= 1.0:
            raise ValueError("selfplay.p_latest must be in [0, 1]")
