"""``SequenceConfig``: one continual run, ``metarl sequence CONFIG.yaml key=value ...``.

The learner is any trainer of ``metarl``: ``learner: ppo | rl2 | maml | fomaml | imaml |
reptile`` (the MAML family takes its settings, MAML++ options included, from ``meta.*``). The
plugins are combined in config: ``regularizer.kind`` (none, l2, ewc, packnet, progressive),
``replay.enabled`` and ``drift.enabled``, with ``boundaries: known`` (the curriculum announces
each stage) or ``hidden`` (the drift detector decides when a stage ends).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from metarl.meta.config import MetaConfig
from metarl.ppo import PPOConfig
from metarl.tracking import LoggingConfig
from metarl.train_config import PolicyConfig, RunConfig

from .drift import ADWINConfig, PageHinkleyConfig
from .replay import ReplayConfig

__all__ = [
    "LEARNERS",
    "META_LEARNERS",
    "DriftSettings",
    "PageHinkleySettings",
    "EvalSettings",
    "PlasticitySettings",
    "ReferenceSettings",
    "RegularizerSettings",
    "ReplaySettings",
    "SequenceConfig",
    "SkillGrowthSettings",
]


LEARNERS = ("ppo", "rl2", "maml", "fomaml", "imaml", "reptile")
META_LEARNERS = ("maml", "fomaml", "imaml", "reptile")


@dataclass
class RegularizerSettings:
    """The regulariser plugin (continual.regularizers / continual.packnet)."""

    kind: Literal["none", "l2", "ewc", "packnet", "progressive"] = "none"
    """none (fine-tuning), l2 (anchor), ewc (online EWC), packnet, or progressive (one policy
    column per stage with lateral adapters, continual.progressive; needs boundaries=known)"""
    strength: float = 100.0
    """λ of the l2 / ewc penalty"""
    ewc_decay: float = 1.0
    """online-EWC γ: old Fishers are multiplied by it at each consolidation"""
    fisher: Literal["empirical", "true"] = "empirical"
    """EWC Fisher: empirical (taken actions) or true (actions sampled from the policy)"""
    fisher_samples: int = 1
    """actions drawn per step for the true Fisher"""
    fisher_iterations: int = 2
    """the stage's last iterations whose data the Fisher is averaged over"""
    prune_fraction: float = 0.5
    """PackNet: share of the free weights released at each stage's end"""
    retrain_fraction: float = 0.25
    """PackNet: last share of each stage's iterations trained after pruning (0: prune at the end)"""
    lateral_width: int | None = None
    """progressive: hidden width of the lateral adapters (None: policy.d_model)"""


@dataclass
class ReplaySettings:
    """Stage replay with a CLEAR-style distillation loss (continual.distill)."""

    enabled: bool = False
    """replay chunks of earlier stages"""
    buffer: ReplayConfig = field(default_factory=ReplayConfig)
    """the buffer; its 'current' stage is the one finished last (current_fraction of a batch),
    the older ones share the rest (old_split)"""
    steps_per_stage: int = 8192
    """transitions stored per stage: the stage's most recent ones, relabelled at its end"""
    batch_size: int = 16
    """replayed chunks per PPO minibatch"""
    coef: float = 1.0
    """weight of the replay loss in the total loss"""
    policy_loss: Literal["kl", "nll"] = "kl"
    """kl: KL(stored π ‖ π_θ) on the stored distributions; nll: −log π_θ(stored action)"""
    value_coef: float = 0.5
    """weight of the value-cloning term (V_θ − V_stored)²"""
    relabel: bool = True
    """at a stage's end, set the stored distributions and values to the final policy's"""
    kind: Literal["distill", "meta"] = "distill"
    """distill: the chunk replay above (any learner; for a meta-learner it distils into θ);
    meta: meta-replay for maml/fomaml, stored (support, query) tasks of earlier stages join every
    meta-batch (continual.meta_replay; buffer.current_fraction and buffer.alpha apply)"""
    meta_tasks: int = 4
    """kind=meta: stored tasks added to each outer step"""
    meta_tasks_per_stage: int = 16
    """kind=meta: tasks kept from each stage (its newest)"""


@dataclass
class PageHinkleySettings:
    """``river.drift.PageHinkley`` arguments, with defaults for one value per iteration of the
    rises of the critic surprise (continual.drift.PageHinkleyConfig has river's defaults, made
    for long raw streams)."""

    min_instances: int = 5
    """values seen (since the last detection) before the test may fire"""
    delta: float = 0.6
    """δ: tolerated change per value (stream units / scale); on a transformed stream, a jump must
    exceed it to count, so the noise of learning does not add up"""
    threshold: float = 0.8
    """λ: the detection threshold (stream units / scale)"""
    alpha: float = 1.0
    """forgetting factor of the cumulative sums"""
    mode: Literal["up", "down", "both"] = "up"
    """watch increases (rises and falls are >= 0: up), decreases or both"""

    def detector_config(self) -> PageHinkleyConfig:
        return PageHinkleyConfig(**dataclasses.asdict(self))


@dataclass
class DriftSettings:
    """Drift detection on a per-iteration stream (continual.drift)."""

    enabled: bool = False
    """watch the stream (with boundaries=known only to score the detector)"""
    stream: Literal[
        "critic_surprise", "log_value_loss", "value_loss", "return", "reward_surprise"
    ] = "critic_surprise"
    """critic_surprise: log(value loss) − max(explained variance, −5), both of the critic on the
    iteration's data (unit-free; a new task makes the critic's loss jump and its explained
    variance drop); log_value_loss, value_loss; return: mean return of the episodes ended in the
    iteration (use transform=fall); reward_surprise: how much worse a reward model of the recent
    iterations predicts this iteration's rewards than it fits its own data, log ratio
    (continual.reward_surprise; any learner, and it sees a new reward function whether or not the
    policy gets worse; use transform=none)"""
    reward_features: Literal["quadratic", "linear"] = "quadratic"
    """stream=reward_surprise: the reward model's features of [observation, action]"""
    reward_forget: float = 0.8
    """stream=reward_surprise: decay of older iterations' data per iteration, in [0, 1) (the
    model's window is about 1 / (1 − reward_forget) iterations)"""
    detector: Literal["page_hinkley", "adwin"] = "page_hinkley"
    """the test"""
    transform: Literal["none", "change", "rise", "fall"] = "rise"
    """what the test sees: the stream itself (none), its change from the previous iteration
    (change), only the increases max(Δ, 0) (rise) or only the decreases max(−Δ, 0) (fall). A task
    switch is one abrupt jump, learning a slow trend; rectified changes keep a big drop (the
    critic catching up) from dragging the test's running mean down"""
    page_hinkley: PageHinkleySettings = field(default_factory=PageHinkleySettings)
    """Page-Hinkley settings"""
    adwin: ADWINConfig = field(default_factory=ADWINConfig)
    """ADWIN settings"""
    scale: float = 1.0
    """the stream is divided by this before the test (its noise level, say)"""
    reset_optimizer: bool = True
    """clear the Adam moments when a detection opens a new stage"""
    discard_recent: int = 1
    """iterations before a detection whose data is not credited to the stage that ended"""
    max_delay_iterations: int | None = None
    """scoring: a detection later than this after a switch counts as a miss (None: any before
    the next switch)"""
    adapt_on_drift: bool = False
    """meta-learners: at a detection, adapt θ on the newest support batch (all its tasks as one
    support set: the new distribution) and act with those parameters for adapt_iterations
    iterations while meta-training goes on (logged as acting_return; without it θ acts)"""
    adapt_iterations: int = 5
    """meta-learners: iterations the parameters adapted at a detection act for"""
    readapt: bool = True
    """adapt_on_drift: adapt again every iteration of that window, from the current θ on its
    support batch (False: the parameters adapted at the detection act throughout; on tuning seeds
    11-13 of sequence_meta_quick readapting raised the post-switch return by 2.1 against 0.4)"""
    acting_tasks: int = 8
    """meta-learners with drift detection: fresh tasks of the current stage the acting policy
    plays one episode of every iteration (its return is acting_return)"""


@dataclass
class EvalSettings:
    """Evaluation of every stage's tasks, giving the curves and R[i, j]."""

    every_iterations: int = 5
    """evaluate every this many iterations within a stage (and at every stage's start and end)"""
    episodes: int = 2
    """episodes per task entry (spread over its task specs)"""
    deterministic: bool = True
    """act with the distribution's mode"""
    seed: int = 12345
    """env seed of every evaluation (the same each time, so curves compare like with like)"""
    adapt_steps: int | None = None
    """meta-learners: inner steps of the adapted evaluation (R_adapt); None: meta.inner_steps.
    learner=ppo with a value: that many fine-tuning steps (SGD on the VPG surrogate at
    meta.inner_lr, the non-meta baseline); null: no adapted evaluation for PPO"""
    adapt_episodes: int = 4
    """meta-learners: sampled episodes per task and step of the adapted evaluation (the support
    each inner step adapts on, and the episodes it is scored on)"""


@dataclass
class ReferenceSettings:
    """Single-task reference curves for forward transfer."""

    mode: Literal["none", "run", "file"] = "none"
    """none: no forward transfer; run: train each stage alone from scratch with the same budget;
    file: read reference curves from `path`"""
    path: str | None = None
    """mode=file: the JSON to read; mode=run: a cache file shared between runs (None: none)"""


@dataclass
class SkillGrowthSettings:
    """The skill library a run grows (continual.skill_growth)."""

    library: str | None = None
    """a skill library path (created if missing); None: no skills are stored"""
    tasks_per_stage: int = 2
    """meta-learners: tasks of each ended stage whose adapted policies become skills"""
    sink: str = "library"
    """the provider in the metarl.skill_sinks entry-point group ('library': skills.SkillLibrary)"""


@dataclass
class PlasticitySettings:
    """Plasticity metrics and one plasticity remedy (continual.plasticity_metrics,
    continual.plasticity; units as defined there)."""

    metrics_every: int = 0
    """log the plasticity metrics every this many iterations (and at each known stage's last);
    0: off"""
    probe_sequences: int = 8
    """sequences of the iteration's batch the activations are read on (metrics, redo, cbp)"""
    probe_steps: int = 64
    """their first this many steps"""
    dormant_tau: float = 0.1
    """metrics: a unit is dormant when its ReDo score is <= this"""
    dead_eps: float = 1e-6
    """metrics: a unit is dead when |activation| <= this on every probe sample"""
    srank_delta: float = 0.01
    """metrics: δ of the srank-δ of the features"""
    remedy: Literal["none", "cbp", "redo", "shrink_perturb", "reset", "l2_init"] = "none"
    """none; cbp (continual backprop); redo (recycle dormant units); shrink_perturb (at stage
    ends); reset (chosen modules at stage ends); l2_init (regenerative L2 to the initialisation)"""
    groups: list[str] = field(default_factory=list)
    """redo, cbp: the unit groups acted on (encoder, encoder.hidden, layers.0, ...); empty: all"""
    reset_moments: bool = True
    """redo, cbp, reset: clear the optimiser moments of the re-initialised weights"""
    redo_every: int = 10
    """redo: recycle every this many iterations"""
    redo_tau: float = 0.1
    """redo: recycle units with score <= this"""
    cbp_replacement_rate: float = 1e-3
    """cbp: ρ, units replaced per eligible unit and iteration"""
    cbp_maturity: int = 20
    """cbp: m, iterations a unit is protected after its (re)initialisation"""
    cbp_decay: float = 0.99
    """cbp: η, decay of the running utility"""
    shrink: float = 0.8
    """shrink_perturb: λ in θ ← λθ + σθ_fresh"""
    perturb: float = 0.2
    """shrink_perturb: σ"""
    reset_modules: list[str] = field(default_factory=lambda: ["head", "value"])
    """reset: module paths re-initialised at every stage end (head, value, layers.1, ...)"""
    l2_init_coef: float = 1e-3
    """l2_init: c in c·Σ‖θ − θ_0‖²"""

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        for name in ("probe_sequences", "probe_steps", "redo_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"plasticity.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("metrics_every", "cbp_maturity"):
            if getattr(self, name) < 0:
                raise ValueError(f"plasticity.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("dormant_tau", "dead_eps", "redo_tau", "perturb", "l2_init_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"plasticity.{name} must be >= 0, got {getattr(self, name)}")
        for name, lo, hi in (
            ("srank_delta", 0.0, 1.0),
            ("cbp_decay", 0.0, 1.0),
        ):
            if not lo <= getattr(self, name) < hi:
                raise ValueError(f"plasticity.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("cbp_replacement_rate", "shrink"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"plasticity.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.remedy == "reset" and not self.reset_modules:
            raise ValueError("plasticity.remedy=reset needs plasticity.reset_modules (e.g. [head])")


@dataclass
class SequenceConfig:
    """One continual run through a curriculum: ``metarl sequence CONFIG.yaml key=value ...``."""

    curriculum: str = "nav2d_quadrants"
    """a shipped curriculum name (curricula.available_curricula()) or a YAML path"""
    stage_steps: int | None = None
    """override every stage's duration (env steps); None: the curriculum's"""
    max_stages: int | None = None
    """run only the first this many stages; None: all"""
    seed: int = 1
    """the run's one seed (overrides ppo.seed)"""
    learner: Literal["ppo", "rl2", "maml", "fomaml", "imaml", "reptile"] = "ppo"
    """ppo: episodic PPO on the stage's tasks; rl2: in-context PPO over trials (RL²); maml,
    fomaml, imaml, reptile: a gradient meta-learner whose meta-batches are drawn from the stage's
    tasks (settings in meta.*; the plugins act on its outer loss)"""
    episodes_per_trial: int = 2
    """RL²: episodes of one task per trial"""
    boundaries: Literal["known", "hidden"] = "known"
    """known: stages end when the curriculum says; hidden: when the drift detector fires"""
    reset_optimizer: bool = False
    """clear the Adam moments at each known stage boundary"""
    async_envs: bool = False
    """step the training and evaluation envs in subprocesses (worth it for Meta-World on many
    cores)"""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """the sequence policy"""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO settings (learner ppo, rl2); total_steps, anneal_lr and seed are unused (stage budgets
    come from the curriculum, the learning rate is constant: a continual learner has no end to
    anneal to, and the seed is `seed`)"""
    meta: MetaConfig = field(default_factory=MetaConfig)
    """gradient meta-learner settings (learner maml, fomaml, imaml, reptile); algo, iterations
    and seed are unused (the learner, the curriculum and `seed` set them)"""
    regularizer: RegularizerSettings = field(default_factory=RegularizerSettings)
    """the regulariser plugin"""
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    """the replay plugin"""
    drift: DriftSettings = field(default_factory=DriftSettings)
    """the drift-detection plugin"""
    eval: EvalSettings = field(default_factory=EvalSettings)
    """evaluation of every task along the sequence"""
    reference: ReferenceSettings = field(default_factory=ReferenceSettings)
    """single-task reference for forward transfer"""
    skills: SkillGrowthSettings = field(default_factory=SkillGrowthSettings)
    """the skill library the run grows at stage ends"""
    plasticity: PlasticitySettings = field(default_factory=PlasticitySettings)
    """plasticity metrics and remedies"""
    run: RunConfig = field(default_factory=RunConfig)
    """run directory (name default: the curriculum's) and checkpoints: one at every stage end,
    plus one every run.checkpoint_every iterations within stages (0: none)"""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """wandb and the progress bar"""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""
        p, r = self.ppo, self.regularizer
        if p.num_envs % p.num_minibatches:
            raise ValueError("ppo.num_minibatches must divide ppo.num_envs (whole sequences)")
        for name, value in (("stage_steps", self.stage_steps), ("max_stages", self.max_stages)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        if self.episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be >= 1, got {self.episodes_per_trial}")
        if r.strength < 0:
            raise ValueError(f"regularizer.strength must be >= 0, got {r.strength}")
        if not 0.0 <= r.ewc_decay <= 1.0:
            raise ValueError(f"regularizer.ewc_decay must be in [0, 1], got {r.ewc_decay}")
        if r.fisher_iterations < 1 or r.fisher_samples < 1:
            raise ValueError("regularizer.fisher_iterations and fisher_samples must be >= 1")
        if not 0.0 <= r.prune_fraction <= 1.0 or not 0.0 <= r.retrain_fraction < 1.0:
            raise ValueError(
                "regularizer.prune_fraction must be in [0, 1], retrain_fraction [0, 1)"
            )
        if r.kind == "packnet" and self.boundaries == "hidden":
            raise ValueError(
                "regularizer.kind=packnet needs boundaries=known: it prunes and retrains at the "
                "end of each stage, which a detection only reveals after the next task began"
            )
        if r.kind == "progressive" and self.boundaries == "hidden":
            raise ValueError(
                "regularizer.kind=progressive needs boundaries=known: it allocates one column per "
                "stage and switches columns at each announced stage end"
            )
        if r.kind == "progressive" and self.skills.library is not None:
            raise ValueError("skills.library stores SequencePolicy skills; not with progressive")
        if r.lateral_width is not None and r.lateral_width < 1:
            raise ValueError(f"regularizer.lateral_width must be >= 1, got {r.lateral_width}")
        if self.boundaries == "hidden" and not self.drift.enabled:
            raise ValueError(
                "boundaries=hidden needs drift.enabled=true (the detector ends stages)"
            )
        rp = self.replay
        if rp.enabled:
            rp.buffer.validate()
            if rp.steps_per_stage < rp.buffer.chunk_len:
                raise ValueError("replay.steps_per_stage must hold at least one chunk")
            if rp.buffer.capacity < rp.steps_per_stage:
                raise ValueError("replay.buffer.capacity must be >= replay.steps_per_stage")
            if rp.kind == "meta" and self.learner not in ("maml", "fomaml"):
                raise ValueError(
                    f"replay.kind=meta replays MAML tasks: it needs learner maml or fomaml, "
                    f"got {self.learner}"
                )
            if rp.meta_tasks < 1 or rp.meta_tasks_per_stage < 1:
                raise ValueError("replay.meta_tasks and replay.meta_tasks_per_stage must be >= 1")
            if rp.batch_size < 1 or rp.coef < 0 or rp.value_coef < 0:
                raise ValueError("replay.batch_size must be >= 1, coef and value_coef >= 0")
            if rp.buffer.chunk_len > p.num_steps and self.learner == "ppo":
                raise ValueError(
                    f"replay chunks (burn_in + seq_len = {rp.buffer.chunk_len}) must fit in one "
                    f"PPO sequence (ppo.num_steps = {p.num_steps})"
                )
        d = self.drift
        if self.learner in META_LEARNERS:
            if self.meta.outer == "trpo" and (r.kind != "none" or rp.enabled):
                raise ValueError(
                    "the regulariser and replay plugins act on an Adam/SGD outer step: use "
                    "meta.outer=adam (or sgd) with them, not trpo"
                )
            if d.adapt_iterations < 1 or d.acting_tasks < 1:
                raise ValueError("drift.adapt_iterations and drift.acting_tasks must be >= 1")
            if d.enabled and d.stream not in ("return", "reward_surprise"):
                raise ValueError(
                    f"drift.stream={d.stream!r} reads a PPO critic; with a meta-learner watch "
                    "drift.stream=reward_surprise or return (the return before adaptation)"
                )
        if d.adapt_on_drift and (self.learner not in META_LEARNERS or not d.enabled):
            raise ValueError(
                "drift.adapt_on_drift adapts a meta-learner at detections: it needs learner "
                "maml, fomaml, imaml or reptile and drift.enabled=true"
            )
        if d.scale <= 0 or d.discard_recent < 0:
            raise ValueError("drift.scale must be > 0 and drift.discard_recent >= 0")
        if not 0.0 <= d.reward_forget < 1.0:
            raise ValueError(f"drift.reward_forget must be in [0, 1), got {d.reward_forget!r}")
        e = self.eval
        if e.every_iterations < 1 or e.episodes < 1 or e.adapt_episodes < 1:
            raise ValueError(
                "eval.every_iterations, eval.episodes and eval.adapt_episodes must be >= 1"
            )
        if e.adapt_steps is not None and e.adapt_steps < 0:
            raise ValueError(f"eval.adapt_steps must be >= 0 or null, got {e.adapt_steps}")
        if self.skills.tasks_per_stage < 1:
            raise ValueError("skills.tasks_per_stage must be >= 1")
        self.plasticity.validate()
        pl = self.plasticity
        if self.learner in META_LEARNERS and self.meta.outer == "trpo":
            if pl.remedy != "none" or pl.metrics_every:
                raise ValueError(
                    "plasticity metrics and remedies are plugins of an Adam/SGD outer step: use "
                    "meta.outer=adam (or sgd) with them, not trpo"
                )
        if self.reference.mode == "file" and not self.reference.path:
            raise ValueError("reference.mode=file needs reference.path")
        if self.run.checkpoint_every < 0:
            raise ValueError("run.checkpoint_every must be >= 0")
