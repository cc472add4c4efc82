"""Meta-RL on sequence policies: task families, the rollout engine and RL objectives.

- :mod:`metarl.tasks`: task families (``make_family("bandit")``, ``"nav2d"``, ``"cartpole"``,
  ``"halfcheetah-vel"``, ``"metaworld-ml1:reach-v3"``, ``"procgen:coinrun"``, ...).
- :class:`Rollout`: steps a :class:`ssm.SequencePolicy` through vector environments into a
  :class:`Trajectory` in ``(T, B, ...)`` layout, carrying and resetting the recurrent state.
- :mod:`metarl.objectives`: GAE, VPG and PPO losses as functions of ``(params, trajectories)``.
- The learners, each a trainer (``step() -> row``, ``state_dict()``): :class:`PPOTrainer`,
  :class:`RL2Trainer`, :class:`MetaTrainer`; the gradient meta-learners with a learn2learn-sized
  surface, :class:`MAML` (``first_order=True``: FOMAML; MAML++ options), :class:`IMAML`,
  :class:`Reptile`; :func:`collect_tasks` (act in a batch of tasks, each with its own adapted
  parameters).
- :class:`Plugin`: what any trainer accepts (loss terms, gradient masks, step and stage hooks);
  :func:`run_loop`: the one run harness (run directory, checkpoints, status, resume).
"""

from ssm.util import lazy_attributes

from .objectives import gae, normalize_advantages, policy_evaluate, ppo_loss, vpg_loss
from .plugins import Plugin, StageEnd
from .rollout import Rollout
from .tasks import FAMILIES, MissingExtraError, Task, TaskFamily, make_family
from .trajectory import Trajectory

# The learners and the harness load on first use, so that a layer above that needs only the
# plugin interface or the trajectory (``import continual`` for EWC) stays light.
_LAZY = {
    "IMAML": ".meta",
    "MAML": ".meta",
    "MetaConfig": ".meta",
    "MetaTrainer": ".meta",
    "Reptile": ".meta",
    "PPOConfig": ".ppo",
    "PPOTrainer": ".ppo",
    "RL2Config": ".rl2",
    "RL2Trainer": ".rl2",
    "Trainer": ".harness",
    "run_loop": ".harness",
    "collect_tasks": ".task_rollout",
    "Agent": ".loading",
    "load": ".loading",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "Agent",
    "FAMILIES",
    "IMAML",
    "MAML",
    "MetaConfig",
    "MetaTrainer",
    "MissingExtraError",
    "PPOConfig",
    "PPOTrainer",
    "Plugin",
    "RL2Config",
    "RL2Trainer",
    "Reptile",
    "Rollout",
    "StageEnd",
    "Task",
    "TaskFamily",
    "Trainer",
    "Trajectory",
    "collect_tasks",
    "gae",
    "load",
    "make_family",
    "normalize_advantages",
    "policy_evaluate",
    "ppo_loss",
    "run_loop",
    "vpg_loss",
]
