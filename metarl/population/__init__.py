"""The multi-agent population: batched games, IPPO/MAPPO learners, communication, self-play,
population-based training, library skills as options or initialisations, emergence analysis.

- :mod:`.envs` / :mod:`.pettingzoo_env`: :class:`MultiAgentEnv` (``(B, N, ...)`` arrays with alive
  masks), the built-in :class:`RoleGathering` task, PettingZoo parallel games (mpe2
  ``simple_spread``, ``simple_tag``).
- :class:`MultiAgentLearner`: actors (:class:`AgentNet`), the central critic, the message channel,
  the PPO update over ``(T, B, N)`` episodes.
- :class:`OpponentPool` (self-play), :class:`PBT` (exploit/explore), :mod:`.analysis`.
- :func:`train_population` and ``metarl population CONFIG``: a run directory end to end;
  :func:`resume_population` and ``metarl population --resume RUN_DIR`` continue one.

Nothing here imports :mod:`skills` at import time; a library is opened only when a config asks.
"""

from .analysis import (
    behavioural_diversity,
    js_divergence,
    role_consistency,
    role_mutual_information,
    specialisation_index,
)
from .batch import MultiAgentBatch
from .config import AgentSpec, CommConfig, PopulationConfig
from .envs import EnvStep, MultiAgentEnv, RoleGathering
from .learner import MultiAgentLearner
from .networks import AgentNet, CentralCritic
from .pbt import PBT, exploit
from .selfplay import OpponentPool
from .train import build_env, evaluate_learner, resume_population, train_population

__all__ = [
    "PBT",
    "AgentNet",
    "AgentSpec",
    "CentralCritic",
    "CommConfig",
    "EnvStep",
    "MultiAgentBatch",
    "MultiAgentEnv",
    "MultiAgentLearner",
    "OpponentPool",
    "PopulationConfig",
    "RoleGathering",
    "behavioural_diversity",
    "build_env",
    "evaluate_learner",
    "exploit",
    "js_divergence",
    "resume_population",
    "role_consistency",
    "role_mutual_information",
    "specialisation_index",
    "train_population",
]
