"""Progressive neural networks (Rusu et al., 2016) over sequence policies.

``K`` columns are allocated up front, one per task; each column is a whole
:class:`~ssm.policy.SequencePolicy` (encoder, residual stack of sequence layers, heads). Column
``k`` reads the earlier columns' residual streams through lateral adapters::

    h^k_0 = W_in^k enc^k(o_t)                                   (the column's embedding)
    z^k_l = h^k_{l-1} + A^k_l(h^{<k}_{l-1})                     l = 1..L
    h^k_l = z^k_l + layer^k_l(norm^k_l(z^k_l))
    f^k   = norm^k(h^k_L + A^k_{L+1}(h^{<k}_L)),   π^k, V^k = heads^k(f^k)

    A^k_l(h^{<k}) = U σ(V (α [h^0; ...; h^{k-1}]))              (the paper's non-linear adapter:
                                                                α a learned scalar, V a
                                                                projection to ``lateral_width``,
                                                                σ = ReLU; column 0 has none)

Information flows from earlier columns to later ones only, so column ``k``'s outputs depend on
columns ``0..k`` and nothing else: freezing a column and training the next leaves the frozen
column's outputs bit-identical. The ``active`` buffer chooses the column that produces the
output; columns after it are not computed (their states pass through, zeroed by resets, so step
and sequence mode agree for them too).

The state is a flat tuple of ``K · L`` layer states, column by column (``state[k·L + l]``), so
it is the sequence-layer protocol's stack state over all columns. The policy offers
``initial_state``, ``forward`` and ``step`` as :class:`~ssm.policy.SequencePolicy` does, and works
under ``functional_call``, ``grad`` and ``vmap`` (``active`` is a buffer read as a Python int;
keep it out of vmapped inputs).

It is built from a :class:`ProgressiveSpec` (JSON): the column's :class:`~ssm.spec.PolicySpec`,
the number of columns and the adapter width, with its own network name
(``ssm.ProgressivePolicy/1``), so :class:`~ssm.spec.PolicySpec` is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_mask, zero_where
from .policy import PolicyOutput, SequencePolicy
from .spec import MAX_WIDTH, PolicySpec
from .stack import check_stack_state

__all__ = [
    "PROGRESSIVE_NETWORK",
    "LateralAdapter",
    "ProgressivePolicy",
    "ProgressiveSpec",
]

PROGRESSIVE_NETWORK = "ssm.ProgressivePolicy/1"
"""the network family and layout version :class:`ProgressivePolicy` builds"""
MAX_COLUMNS = 256
ALPHA_INIT = 0.1
"""initial α of every adapter (the paper: "a small random value"; a fixed one keeps a column's
initialisation independent of the draw order)"""


@dataclass(frozen=True)
class ProgressiveSpec:
    """Everything needed to build a :class:`ProgressivePolicy`."""

    column: PolicySpec
    """the spec of one column (every column has the same architecture)"""
    columns: int
    """K: the number of columns, one per task"""
    lateral_width: int
    """hidden width of each lateral adapter (the paper: the width of one layer)"""
    network: str = PROGRESSIVE_NETWORK
    """the network family and its layout version"""

    def __post_init__(self) -> None:
        if not isinstance(self.column, PolicySpec):
            raise ValueError(f"column must be an ssm.PolicySpec, got {type(self.column).__name__}")
        problems = []
        if self.network != PROGRESSIVE_NETWORK:
            problems.append(f"network must be {PROGRESSIVE_NETWORK!r}, got {self.network!r}")
        for name, limit in (("columns", MAX_COLUMNS), ("lateral_width", MAX_WIDTH)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                problems.append(f"{name} must be an int in [1, {limit}], got {value!r}")
        if problems:
            raise ValueError("invalid ProgressiveSpec: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "column": self.column.to_json(),
            "columns": self.columns,
            "lateral_width": self.lateral_width,
        }

    @classmethod
    def from_json(cls, data: Any) -> ProgressiveSpec:
        """The inverse of :meth:`to_json`; unknown or missing keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a ProgressiveSpec must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(map(str, set(data) - names)), sorted(names - set(data))
        if unknown or missing:
            raise ValueError(
                f"ProgressiveSpec keys must be {sorted(names)}; unknown {unknown}, missing "
                f"{missing}"
            )
        return cls(**{**data, "column": PolicySpec.from_json(data["column"])})


class LateralAdapter(nn.Module):
    """``A(h) = U relu(V (α h))``: earlier columns' streams ``h (..., d_in)`` -> ``(..., d_out)``
    (Rusu et al.'s adapter: α rescales the inputs, V reduces their width)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(ALPHA_INIT))
        self.down = nn.Linear(d_in, d_hidden)
        self.up = nn.Linear(d_hidden, d_out)

    def forward(self, h: Tensor) -> Tensor:
        return self.up(F.relu(self.down(self.alpha * h)))


class ProgressivePolicy(nn.Module):
    """``K`` sequence-policy columns with lateral adapters (see the module docstring).

    Parameters are named ``columns.k.*`` (column ``k``, a :class:`~ssm.policy.SequencePolicy`)
    and ``laterals.(k-1).l.*`` (the adapters into column ``k`` at depth ``l``, 0..L);
    :meth:`column_of` maps a name to its column. Build it with :meth:`from_spec`, or with
    :meth:`from_policy` from a policy that becomes column 0.
    """

    def __init__(self, spec: ProgressiveSpec):
        super().__init__()
        if not isinstance(spec, ProgressiveSpec):
            raise ValueError(f"spec must be an ssm.ProgressiveSpec, got {type(spec).__name__}")
        self._spec = spec
        c = spec.column
        self.num_columns, self.n_layers, self.d_model = spec.columns, c.n_layers, c.d_model
        self.kind, self.in_context, self.obs_shape = c.kind, c.in_context, c.obs_shape
        self.columns = nn.ModuleList(SequencePolicy(spec=c) for _ in range(spec.columns))
        self.laterals = nn.ModuleList(
            nn.ModuleList(
                LateralAdapter(k * c.d_model, spec.lateral_width, c.d_model)
                for _ in range(c.n_layers + 1)
            )
            for k in range(1, spec.columns)
        )
        self.register_buffer("active", torch.zeros((), dtype=torch.long))
        self.to(getattr(torch, c.dtype))  # the adapters follow the columns' dtype

    @classmethod
    def from_spec(cls, spec: ProgressiveSpec) -> ProgressivePolicy:
        """The policy ``spec`` describes (fresh initial parameters; load a state dict)."""
        return cls(spec)

    @classmethod
    def from_policy(
        cls, policy: SequencePolicy, columns: int, lateral_width: int | None = None
    ) -> ProgressivePolicy:
        """``columns`` columns shaped like ``policy``; column 0 starts with ``policy``'s
        parameters (so stage 0 starts where a single policy would), the others fresh.
        ``lateral_width`` defaults to the policy's ``d_model``."""
        if not isinstance(policy, SequencePolicy):
            raise ValueError(f"policy must be an ssm.SequencePolicy, got {type(policy).__name__}")
        spec = ProgressiveSpec(policy.spec, columns, lateral_width or policy.d_model)
        net = cls(spec)
        net.columns[0].load_state_dict(policy.state_dict())
        return net.to(next(policy.parameters()).device)

    @property
    def spec(self) -> ProgressiveSpec:
        column = self.columns[0].spec  # follows .to()/.double()
        if column == self._spec.column:
            return self._spec
        return ProgressiveSpec(column, self._spec.columns, self._spec.lateral_width)

    @property
    def observation_space(self):
        return self.columns[0].observation_space

    @property
    def action_space(self):
        return self.columns[0].action_space

    @property
    def head(self):
        """An action head with the columns' distribution (every column's head has the same
        type and bounds; its methods use only the distribution parameters)."""
        return self.columns[0].head

    # -- columns --------------------------------------------------------------------------------
    @property
    def active_column(self) -> int:
        """The column that produces the outputs."""
        return int(self.active)

    def set_active(self, column: int) -> None:
        if isinstance(column, bool) or not isinstance(column, int):
            raise ValueError(f"column must be an int, got {column!r}")
        if not 0 <= column < self.num_columns:
            raise ValueError(f"column must be in [0, {self.num_columns - 1}], got {column}")
        self.active.fill_(column)

    def column_of(self, name: str) -> int:
        """The column a parameter belongs to (an adapter into column k belongs to k)."""
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "columns" and parts[1].isdigit():
            return int(parts[1])
        if len(parts) > 2 and parts[0] == "laterals" and parts[1].isdigit():
            return int(parts[1]) + 1
        raise ValueError(f"{name!r} is not a parameter of a ProgressivePolicy column")

    # -- state ----------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device=None, dtype=None) -> tuple:
        """A zero state for every column: ``K · L`` layer states, column by column."""
        return tuple(
            s for col in self.columns for s in col.initial_state(batch_size, device, dtype)
        )

    # -- the columns in either mode -------------------------------------------------------------
    def _run(
        self,
        obs: Tensor,
        context: tuple,
        state: tuple | None,
        resets: Tensor | None,
        step: bool,
    ) -> tuple[PolicyOutput, tuple]:
        """Columns ``0..active``; ``resets`` is ``(B, L)`` in sequence mode, ``(B,)`` in step
        mode. ``streams[k][l]`` is ``h^k_l``, what the later columns' adapters read."""
        active, n = self.active_column, self.n_layers
        streams: list[list[Tensor]] = []
        new_state: list[tuple[Tensor, ...]] = []
        out, ref = None, None
        for k, col in enumerate(self.columns):
            own = None if state is None else state[k * n : (k + 1) * n]
            if k > active:
                new_state.extend(self._idle(col, own, ref, resets, step))
                continue
            x = col.embed(obs, *context)
            ref = x if ref is None else ref
            h = []
            for i in range(n + 1):
                h.append(x)
                if k:  # the adapter reads h^j_i of every earlier column j
                    earlier = torch.cat([streams[j][i] for j in range(k)], dim=-1)  # (..., k·d)
                    x = x + self.laterals[k - 1][i](earlier)
                if i == n:
                    break
                layer, norm, s = col.layers[i], col.norms[i], None if own is None else own[i]
                if step:
                    y, s = layer.step(norm(x), None if s is None else zero_where(s, resets))
                else:
                    y, s = layer(norm(x), s, resets)
                x = x + y
                new_state.append(s)
            streams.append(h)
            if k == active:
                out = col.heads(col.final_norm(x))
        return out, tuple(new_state)

    def _idle(self, col: SequencePolicy, own, ref: Tensor, resets, step: bool):
        """A column after the active one keeps its state (zeroed where a reset happened)."""
        batch = ref.shape[0]
        if own is None:
            return col.initial_state(batch, ref.device, ref.dtype)
        own = tuple(layer._check_state(s, batch, ref) for layer, s in zip(col.layers, own))
        if resets is None:
            return own
        mask = resets if step else resets.any(dim=1)
        return tuple(zero_where(s, mask) for s in own)

    # -- the contract ---------------------------------------------------------------------------
    def forward(
        self,
        obs: Tensor,
        state: tuple | None = None,
        resets: Tensor | None = None,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> tuple[PolicyOutput, tuple]:
        """Sequence mode: ``obs (B, L, *obs_shape)`` -> the active column's outputs with leading
        ``(B, L)``, and the state of every column."""
        self.columns[0]._check_obs(obs, 2)
        resets = check_mask(resets, tuple(obs.shape[:2]), "resets")
        check_stack_state(state, self.num_columns * self.n_layers, "progressive policy state")
        return self._run(obs, (prev_action, prev_reward, prev_done), state, resets, step=False)

    def step(
        self,
        obs: Tensor,
        state: tuple | None,
        reset: Tensor | None = None,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> tuple[PolicyOutput, tuple]:
        """Recurrent mode: ``obs (B, *obs_shape)`` -> outputs with leading ``(B,)``."""
        self.columns[0]._check_obs(obs, 1)
        reset = check_mask(reset, (obs.shape[0],), "reset")
        check_stack_state(state, self.num_columns * self.n_layers, "progressive policy state")
        return self._run(obs, (prev_action, prev_reward, prev_done), state, reset, step=True)

    # -- distributions ---------------------------------------------------------------------------
    def log_prob(self, out: PolicyOutput, action: Tensor) -> Tensor:
        return self.head.log_prob(out.dist_params, action)

    def entropy(self, out: PolicyOutput) -> Tensor:
        return self.head.entropy(out.dist_params)

    def sample(self, out: PolicyOutput, generator: torch.Generator | None = None) -> Tensor:
        return self.head.sample(out.dist_params, generator)

    def mode(self, out: PolicyOutput) -> Tensor:
        return self.head.mode(out.dist_params)
