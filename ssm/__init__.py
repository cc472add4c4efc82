"""Sequence models for policies: S4D, S5 and Mamba layers, GRU/LSTM baselines, the selective scan,
the residual stack, and :class:`SequencePolicy`, built from a JSON :class:`PolicySpec`.

Importing ``ssm`` needs only torch and numpy (gymnasium only for the spaces adapters).

Every layer offers ``initial_state(batch)``, ``forward(x, state=None, resets=None)`` and
``step(x, state, reset=None)``; step and sequence mode agree to float precision.
"""

from .backend import BACKENDS
from .base import SequenceLayer, State
from .diagonal_scan import diagonal_linear_scan
from .heads import ActionHead, CategoricalHead, GaussianHead, MultiDiscreteHead
from .lti import S4D, S5
from .mamba import Mamba
from .mamba2 import Mamba2
from .norm import LayerNorm
from .policy import PolicyOutput, SequencePolicy
from .registry import KINDS, make_layer
from .rnn import GRU, LSTM
from .selective_scan import selective_scan, selective_scan_ref
from .spec import PolicySpec
from .stack import make_stack, residual_forward, residual_step

__all__ = [
    "ActionHead",
    "BACKENDS",
    "CategoricalHead",
    "GaussianHead",
    "MultiDiscreteHead",
    "PolicyOutput",
    "PolicySpec",
    "SequencePolicy",
    "GRU",
    "KINDS",
    "LayerNorm",
    "LSTM",
    "S4D",
    "S5",
    "Mamba",
    "Mamba2",
    "SequenceLayer",
    "State",
    "diagonal_linear_scan",
    "make_layer",
    "make_stack",
    "residual_forward",
    "residual_step",
    "selective_scan",
    "selective_scan_ref",
]
