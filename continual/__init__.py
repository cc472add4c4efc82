"""Continual learning: EWC and baselines, stage-proportional prioritized replay, drift detection.

- :mod:`continual.replay`: :class:`ReplayBuffer`, prioritized replay of recurrent sequence chunks
  (stored state + burn-in), sampled in stage proportions; snapshots for checkpoints.
- :mod:`continual.sum_tree`: the batched sum/min-trees under it.
- :mod:`continual.regularizers`: the plugin interface and :class:`FineTuning`, :class:`L2Anchor`,
  :class:`EWC` (online, diagonal Fisher from :mod:`continual.fisher`); :mod:`continual.packnet`:
  :class:`PackNet`.
- :mod:`continual.drift`: Page-Hinkley and ADWIN (river) over named scalar streams.
- :mod:`continual.metrics`: Continual World metrics, detection scores and plots.
- :mod:`continual.learner`: :class:`ContinualLearner`, PPO or RL² with the plugins above
  (:mod:`continual.distill`: the replay distillation loss); :mod:`continual.config`:
  :class:`SequenceConfig`; :mod:`continual.sequence`: :func:`run_sequence` /
  :func:`resume_sequence`, a curriculum run into a run directory (``metarl sequence``,
  :mod:`continual.cli`); :mod:`continual.evaluation`: scoring every task of a sequence.
"""

from .config import SequenceConfig
from .drift import ADWINConfig, Detection, DriftMonitor, PageHinkleyConfig, StreamDetector
from .fisher import fisher_diagonal
from .learner import ContinualLearner
from .packnet import PackNet
from .regularizers import (
    EWC,
    ConsolidationContext,
    FineTuning,
    L2Anchor,
    Regularizer,
    RegularizerSet,
)
from .replay import ReplayBatch, ReplayBuffer, ReplayConfig
from .sequence import SequenceResult, resume_sequence, run_sequence
from .sum_tree import SumTree

__all__ = [
    "ADWINConfig",
    "EWC",
    "ConsolidationContext",
    "ContinualLearner",
    "Detection",
    "DriftMonitor",
    "FineTuning",
    "L2Anchor",
    "PackNet",
    "PageHinkleyConfig",
    "Regularizer",
    "RegularizerSet",
    "ReplayBatch",
    "ReplayBuffer",
    "ReplayConfig",
    "SequenceConfig",
    "SequenceResult",
    "StreamDetector",
    "SumTree",
    "fisher_diagonal",
    "resume_sequence",
    "run_sequence",
]
