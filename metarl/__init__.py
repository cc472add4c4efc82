"""Meta-RL on sequence policies: task families, the rollout engine and RL objectives.

- :mod:`metarl.tasks`: task families (``make_family("bandit")``, ``"nav2d"``, ``"cartpole"``,
  ``"halfcheetah-vel"``, ``"metaworld-ml1:reach-v3"``, ``"procgen:coinrun"``, ...).
- :class:`Rollout`: steps a :class:`ssm.SequencePolicy` through vector environments into a
  :class:`Trajectory` in ``(T, B, ...)`` layout, carrying and resetting the recurrent state.
- :mod:`metarl.objectives`: GAE, VPG and PPO losses as functions of ``(params, trajectories)``.
"""

from .objectives import gae, normalize_advantages, policy_evaluate, ppo_loss, vpg_loss
from .rollout import Rollout
from .tasks import FAMILIES, MissingExtraError, Task, TaskFamily, make_family
from .trajectory import Trajectory

__all__ = [
    "FAMILIES",
    "MissingExtraError",
    "Rollout",
    "Task",
    "TaskFamily",
    "Trajectory",
    "gae",
    "make_family",
    "normalize_advantages",
    "policy_evaluate",
    "ppo_loss",
    "vpg_loss",
]
