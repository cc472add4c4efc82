"""A skill's network: :class:`ssm.SequencePolicy` built from the skill's :class:`ssm.PolicySpec`
(``SequencePolicy.from_spec``; no gymnasium, no copy of the policy).

:func:`build_network` is what the library calls on a spec read from a manifest (untrusted input):
it sizes the network on the ``meta`` device first, refuses oversized specs, leaves the global RNG
alone, and reports every failure as a :class:`SkillLibraryError`.
"""

from __future__ import annotations

import torch

from ssm.policy import PolicyOutput, PolicyState, SequencePolicy
from ssm.spec import PolicySpec

from .errors import SkillLibraryError

SkillNetwork = SequencePolicy
"""the network class of every skill (kept as a name of the import API)"""
NetworkOutput = PolicyOutput
LayerStates = PolicyState

MAX_PARAMETERS = 1 << 28
"""the largest network a spec may describe (2^28 parameters, 1 GiB in float32)"""


def parameter_shapes(spec: PolicySpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The state-dict names, shapes and dtypes of ``spec``'s network, found by building it on
    the ``meta`` device (no memory, no RNG). Raises :class:`SkillLibraryError` for a spec that
    cannot be built or exceeds :data:`MAX_PARAMETERS`."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            net = SequencePolicy.from_spec(spec)
    except Exception as e:  # any failure of a layer constructor on a (damaged) spec
        raise SkillLibraryError(
            f"cannot build a network from the spec: {type(e).__name__}: {e}"
        ) from None
    sd = net.state_dict()
    total = sum(v.numel() for v in sd.values())
    if total > MAX_PARAMETERS:
        raise SkillLibraryError(
            f"the spec describes {total:,} parameters, more than the limit of {MAX_PARAMETERS:,}"
        )
    return {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}


def build_network(spec: PolicySpec) -> SequencePolicy:
    """``SequencePolicy.from_spec(spec)``, checked first with :func:`parameter_shapes`, without
    touching the global RNG (the initial values are replaced when parameters are loaded, and a
    training run must not have its random stream shifted by loading a skill)."""
    parameter_shapes(spec)
    try:
        with torch.random.fork_rng(devices=[]):
            return SequencePolicy.from_spec(spec)
    except Exception as e:
        raise SkillLibraryError(
            f"cannot build a network from the spec: {type(e).__name__}: {e}"
        ) from None
