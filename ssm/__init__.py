"""Sequence models for policies: S4D, S5 and Mamba layers, GRU/LSTM baselines, the selective scan
and :class:`SequencePolicy`.

Every layer offers ``initial_state(batch)``, ``forward(x, state=None, resets=None)`` and
``step(x, state, reset=None)``; step and sequence mode agree to float precision.
"""

from .backend import BACKENDS
from .base import SequenceLayer, State
from .heads import ActionHead, CategoricalHead, GaussianHead, MultiDiscreteHead
from .lti import S4D, S5
from .mamba import Mamba
from .registry import KINDS, make_layer
from .rnn import GRU, LSTM
from .scan import diagonal_linear_scan
from .selective_scan import selective_scan, selective_scan_ref


def __getattr__(name: str):
    # PEP 562: SequencePolicy pulls in gymnasium (for spaces); the layers do not, so importing the
    # layers (as the skill library's import API does) must not import gymnasium.
    if name in ("PolicyOutput", "SequencePolicy"):
        from . import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'ssm' has no attribute {name!r}")


__all__ = [
    "ActionHead",
    "BACKENDS",
    "CategoricalHead",
    "GaussianHead",
    "MultiDiscreteHead",
    "PolicyOutput",
    "SequencePolicy",
    "GRU",
    "KINDS",
    "LSTM",
    "S4D",
    "S5",
    "Mamba",
    "SequenceLayer",
    "State",
    "diagonal_linear_scan",
    "make_layer",
    "selective_scan",
    "selective_scan_ref",
]
