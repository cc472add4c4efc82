"""The layer registry: ``KINDS`` and :func:`make_layer`."""

from __future__ import annotations

import inspect

from .base import SequenceLayer
from .lti import S4D, S5
from .mamba import Mamba
from .mamba2 import Mamba2
from .rnn import GRU, LSTM

KINDS: dict[str, type[SequenceLayer]] = {
    "s4d": S4D,
    "s5": S5,
    "mamba": Mamba,
    "mamba2": Mamba2,
    "gru": GRU,
    "lstm": LSTM,
}


def make_layer(kind: str, d_model: int, **kwargs) -> SequenceLayer:
    """Build a sequence layer of ``kind`` (one of ``KINDS``) and width ``d_model``.

    Unknown kinds and keywords raise ``ValueError`` naming what is accepted.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown sequence layer kind {kind!r}; expected one of {sorted(KINDS)}")
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
        raise ValueError(f"d_model must be a positive int, got {d_model!r}")
    cls = KINDS[kind]
    accepted = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "d_model")
    ]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"unknown keyword(s) {unknown} for {kind!r}; accepted: {accepted}")
    return cls(d_model, **kwargs)
