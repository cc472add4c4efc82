"""``MetaConfig``: every gradient meta-learner and outer optimiser, selectable from one config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ALGOS = ("maml", "fomaml", "imaml", "reptile")
OUTERS = ("adam", "sgd", "trpo")
LR_MODES = ("fixed", "lslr", "meta_sgd")


@dataclass
class MetaConfig:
    """Gradient meta-RL hyperparameters (defaults: MAML-RL on 2D navigation, Finn et al. 2017)."""

    algo: Literal["maml", "fomaml", "imaml", "reptile"] = "maml"
    """meta-learner: MAML (second order), first-order MAML, implicit MAML or Reptile"""
    inner_lr: float = 0.1
    """inner-loop SGD step size α (the initial value when learned)"""
    inner_steps: int = 1
    """inner gradient steps K"""
    inner_objective: Literal["lvc", "ppo", "vpg"] = "lvc"
    """inner surrogate: LVC magic-box (unbiased curvature), PPO-clip ratio, or plain VPG (biased)"""
    outer_objective: Literal["vpg", "ppo"] = "vpg"
    """query surrogate: importance-weighted VPG or PPO-clip"""
    resample_support: bool = False
    """collect fresh support with φ_k before inner step k (Finn et al.), not one reused batch"""
    lr_mode: Literal["fixed", "lslr", "meta_sgd"] = "fixed"
    """inner lrs: fixed, learned per layer and step (MAML++ LSLR), or per element and step"""
    lr_learning_rate: float = 1e-3
    """Adam learning rate of the learned inner lrs"""
    multi_step_loss: bool = False
    """MAML++ multi-step loss: weight the query loss after every inner step, annealed to the last"""
    msl_anneal_iters: int = 100
    """outer iterations over which the multi-step loss weights anneal to the final step"""
    first_order_iters: int = 0
    """MAML++ derivative-order annealing: use first-order MAML for this many outer iterations"""
    imaml_lambda: float = 1.0
    """iMAML proximal regularisation λ"""
    imaml_cg_steps: int = 5
    """conjugate-gradient iterations for the iMAML implicit gradient"""
    imaml_damping: float = 0.0
    """iMAML CG damping δ: solve ((1 + δ) I + H/λ) x = g"""
    outer: Literal["adam", "sgd", "trpo"] = "adam"
    """outer optimiser: Adam, plain SGD (Reptile's classic), or a TRPO step (MAML-TRPO)"""
    outer_lr: float = 1e-3
    """Adam/SGD meta learning rate (under trpo: the critic's Adam learning rate)"""
    max_grad_norm: float | None = 1.0
    """clip the meta-gradient norm (Adam/SGD); None disables"""
    max_kl: float = 0.01
    """TRPO: KL(π_old ‖ π_new) bound on the adapted query policies"""
    trpo_cg_steps: int = 10
    """TRPO: conjugate-gradient iterations on the Fisher-vector product"""
    trpo_fisher: Literal["exact", "first_order"] = "exact"
    """TRPO metric: the KL's exact Hessian through the inner loop (third order), or with
    dφ/dθ ≈ I (the adapted policies' own Fisher; much cheaper; the line search is still exact)"""
    trpo_damping: float = 1e-2
    """TRPO: damping added to the Fisher-vector product"""
    backtrack_ratio: float = 0.5
    """TRPO: line-search shrink factor"""
    max_backtracks: int = 15
    """TRPO: line-search attempts before the step is rejected"""
    meta_batch_size: int = 20
    """tasks per outer iteration"""
    episodes_per_task: int = 20
    """trajectories per task for each of support and query (one env each)"""
    num_steps: int | None = None
    """steps per collection; None: the family's episode length (one episode per env)"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 1.0
    """GAE λ (1: Monte-Carlo returns minus the baseline, as in MAML-RL)"""
    baseline: Literal["linear", "critic"] = "linear"
    """advantage baseline: per-task linear feature fit (MAML-RL) or the policy's value head"""
    norm_adv: bool = True
    """standardise advantages within each task"""
    clip_coef: float = 0.2
    """PPO ratio clip ε (ppo objectives)"""
    ent_coef: float = 0.0
    """entropy bonus on the query loss"""
    vf_coef: float = 0.5
    """critic regression weight (baseline='critic' only)"""
    vectorize: bool = True
    """vmap the inner loop over tasks (if vmap fails: a Python loop, with a logged warning)"""
    vmap_chunk: int | None = None
    """tasks per vmapped call (null: the whole meta-batch at once; smaller bounds memory)"""
    iterations: int = 500
    """outer iterations"""
    seed: int = 1
    """the run's one seed"""

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(self.algo in ALGOS, f"algo must be one of {ALGOS}, got {self.algo!r}")
        need(
            self.vmap_chunk is None or self.vmap_chunk >= 1,
            f"vmap_chunk must be null or >= 1, got {self.vmap_chunk}",
        )
        need(self.trpo_fisher in ("exact", "first_order"), "trpo_fisher: 'exact' or 'first_order'")
        need(self.outer in OUTERS, f"outer must be one of {OUTERS}, got {self.outer!r}")
        need(self.lr_mode in LR_MODES, f"lr_mode must be one of {LR_MODES}, got {self.lr_mode!r}")
        need(self.inner_lr > 0, f"inner_lr must be > 0, got {self.inner_lr}")
        need(self.inner_steps >= 1, f"inner_steps must be >= 1, got {self.inner_steps}")
        need(self.meta_batch_size >= 1, "meta_batch_size must be >= 1")
        need(self.episodes_per_task >= 1, "episodes_per_task must be >= 1")
        need(self.num_steps is None or self.num_steps >= 1, "num_steps must be >= 1 or None")
        need(self.iterations >= 1, "iterations must be >= 1")
        need(self.outer_lr > 0, f"outer_lr must be > 0, got {self.outer_lr}")
        need(self.imaml_lambda > 0, f"imaml_lambda must be > 0, got {self.imaml_lambda}")
        need(self.imaml_cg_steps >= 1, "imaml_cg_steps must be >= 1")
        need(self.imaml_damping >= 0, "imaml_damping must be >= 0")
        need(self.max_kl > 0, f"max_kl must be > 0, got {self.max_kl}")
        need(0 < self.backtrack_ratio < 1, "backtrack_ratio must be in (0, 1)")
        need(self.trpo_cg_steps >= 1 and self.max_backtracks >= 1, "TRPO needs >= 1 CG step/try")
        need(self.msl_anneal_iters >= 1, "msl_anneal_iters must be >= 1")
        need(self.first_order_iters >= 0, "first_order_iters must be >= 0")
        if self.outer == "trpo":
            need(
                self.algo in ("maml", "fomaml"),
                "outer='trpo' takes a constrained step on the query surrogate of the adapted "
                f"policies (MAML-TRPO); it is not defined for algo={self.algo!r}",
            )
        if self.outer == "trpo":
            need(
                self.lr_mode == "fixed",
                "learned inner learning rates are trained by Adam on the meta-gradient; "
                "use outer='adam' or 'sgd' with lr_mode != 'fixed'",
            )
        if self.algo in ("imaml", "reptile"):
            need(
                self.lr_mode == "fixed",
                f"learned inner learning rates (lr_mode={self.lr_mode!r}) need algo maml/fomaml",
            )
            need(not self.multi_step_loss, "multi_step_loss needs algo maml/fomaml")
        if self.algo == "imaml":
            need(not self.resample_support, "iMAML solves one fixed proximal problem per task")
