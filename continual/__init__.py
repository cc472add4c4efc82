"""Continual learning: EWC and baselines, stage-proportional prioritized replay, drift detection.

- :mod:`continual.replay`: :class:`ReplayBuffer`, prioritized replay of recurrent sequence chunks
  (stored state + burn-in), sampled in stage proportions; snapshots for checkpoints.
- :mod:`continual.sum_tree`: the batched sum/min-trees under it.
- :mod:`continual.regularizers`: regularisers as trainer plugins (:class:`metarl.plugins.Plugin`)
  and :class:`FineTuning`, :class:`L2Anchor`,
  :class:`EWC` (online, diagonal Fisher from :mod:`continual.fisher`); :mod:`continual.packnet`:
  :class:`PackNet`.
- :mod:`continual.drift`: Page-Hinkley and ADWIN (river) over named scalar streams;
  :mod:`continual.reward_surprise`: :class:`RewardSurprise`, a label-free stream for any learner
  (a ridge reward model's prequential error: it sees a new reward function).
- :mod:`continual.metrics`: Continual World metrics, detection scores and plots.
- :mod:`continual.learner`: :class:`ContinualLearner`, any metarl trainer (PPO, RL², the MAML
  family) with the plugins above (:mod:`continual.distill`: the replay distillation loss and its
  plugin, :class:`ReplayDistillation`; :mod:`continual.stage_tasks`: a curriculum stage as a
  trainer's data source); :mod:`continual.config`:
  :class:`SequenceConfig`; :mod:`continual.sequence`: :func:`run_sequence` /
  :func:`resume_sequence`, a curriculum run into a run directory (``metarl sequence``,
  :mod:`continual.cli`); :mod:`continual.evaluation`: scoring every task of a sequence.
"""

from ssm.util import lazy_attributes

from .distill import ReplayDistillation
from .drift import ADWINConfig, Detection, DriftMonitor, PageHinkleyConfig, StreamDetector
from .fisher import fisher_diagonal
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
from .sum_tree import SumTree

# The run machinery (the learner over metarl's trainers, the sequence harness) loads on first
# use, so that `import continual` for EWC or replay in your own loop stays light.
_LAZY = {
    "ContinualLearner": ".learner",
    "RewardSurprise": ".reward_surprise",
    "SequenceConfig": ".config",
    "SequenceResult": ".sequence",
    "SequenceRun": ".sequence",
    "resume_sequence": ".sequence",
    "run_sequence": ".sequence",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

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
    "ReplayDistillation",
    "RewardSurprise",
    "SequenceConfig",
    "SequenceResult",
    "SequenceRun",
    "StreamDetector",
    "SumTree",
    "fisher_diagonal",
    "resume_sequence",
    "run_sequence",
]
