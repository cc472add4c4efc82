"""The sequence-layer contract shared by every layer in :mod:`ssm`.

Every layer maps ``(B, L, D) -> (B, L, D)`` and carries an explicit recurrent state, a tuple of
tensors whose leading axis is the batch. ``resets[b, t]`` zeroes the state of sequence ``b``
*before* step ``t``, so one call can process a rollout that spans several episodes.

Subclasses implement ``state_shapes``, ``_forward`` and ``_step``; this base class does the input
checking once, so that no layer broadcasts silently or accepts integer inputs.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from . import backend as _backend

State = tuple[Tensor, ...]
_REAL_FLOATS = (torch.float32, torch.float64)
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _fmt(shape: tuple[int, ...] | torch.Size) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_floating(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise ValueError(
            f"{name} must be a floating-point tensor (float32 or float64), got dtype {x.dtype}; "
            "cast integer observations with .float() first"
        )


def check_mask(mask: Tensor | None, shape: tuple[int, ...], name: str) -> Tensor | None:
    """A reset mask must be a bool tensor of exactly ``shape`` (no broadcasting)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(
            f"{name} must be a bool torch.Tensor of shape {_fmt(shape)}, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must have dtype torch.bool, got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {_fmt(shape)}, got {_fmt(mask.shape)}")
    return mask


def zero_where(state: State, reset: Tensor | None) -> State:
    """Zero each state tensor for the batch rows where ``reset`` (B,) is true."""
    if reset is None:
        return state
    out = []
    for s in state:
        keep = (~reset).to(s.real.dtype if s.is_complex() else s.dtype)
        out.append(s * keep.reshape(keep.shape + (1,) * (s.dim() - 1)))
    return tuple(out)


class SequenceLayer(nn.Module, abc.ABC):
    """Base class: ``initial_state``, ``forward`` (sequence mode) and ``step`` (recurrent mode)."""

    d_model: int

    # -- to implement -------------------------------------------------------------------------
    @abc.abstractmethod
    def state_shapes(self, batch_size: int) -> list[tuple[tuple[int, ...], bool]]:
        """Shapes of the state tensors for ``batch_size``, each with a flag ``is_complex``."""

    @abc.abstractmethod
    def _forward(
        self, x: Tensor, state: State | None, resets: Tensor | None
    ) -> tuple[Tensor, State]:
        """Sequence mode on checked inputs; ``state=None`` means the zero state."""

    @abc.abstractmethod
    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One step on checked inputs; resets were already applied to ``state``."""

    # -- the contract ---------------------------------------------------------------------------
    def _param_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        # A direct parameter if there is one: cheaper than walking self.parameters() every step.
        p = next(iter(self._parameters.values()), None)
        if p is None:
            p = next(self.parameters())
        return p.dtype, p.device

    def fused_step_ready(self, x: Tensor) -> bool:
        """The fused C++ steps are for acting: no autograd recording, no transform, CPU.
        (The state was checked against ``x``'s dtype and device by ``step``.)"""
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype not in _REAL_FLOATS:
            return False
        if getattr(self, "backend", "auto") != "auto":
            return False
        return _backend.fused_allowed(what=f"{type(self).__name__} step") and (
            _backend.cpu_ext() is not None
        )

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """A zero state for ``batch_size`` sequences. ``dtype`` is the real dtype."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        pdtype, pdevice = self._param_dtype_device()
        dtype = dtype or pdtype
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a real floating dtype, got {dtype}")
        device = pdevice if device is None else torch.device(device)
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return tuple(
            torch.zeros(shape, device=device, dtype=cdtype if is_complex else dtype)
            for shape, is_complex in self.state_shapes(batch_size)
        )

    def zeros_like_state(self, x: Tensor) -> State:
        """The zero state for the batch of ``x``, on its device and dtype."""
        return self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)

    def _expected_state(self, batch_size: int):
        cache = self.__dict__.setdefault("_state_shape_cache", {})
        if batch_size not in cache:
            cache[batch_size] = [(torch.Size(s), c) for s, c in self.state_shapes(batch_size)]
        return cache[batch_size]

    def _check_state(self, state: State, batch_size: int, x: Tensor) -> State:
        expected = self._expected_state(batch_size)
        # Fast path (every acting step comes here): exact shape, dtype and device.
        if isinstance(state, tuple) and len(state) == len(expected):
            real, cplx = x.dtype, _COMPLEX_OF.get(x.dtype)
            if all(
                isinstance(t, Tensor)
                and t.shape == shape
                and t.dtype == (cplx if is_complex else real)
                and t.device == x.device
                for t, (shape, is_complex) in zip(state, expected)
            ):
                return state
        return self._explain_bad_state(state, batch_size, x, expected)

    def _explain_bad_state(self, state, batch_size: int, x: Tensor, expected) -> State:
        if not isinstance(state, (tuple, list)) or len(state) != len(expected):
            raise ValueError(
                f"{type(self).__name__} state must be a tuple of {len(expected)} tensors "
                f"(see initial_state), got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
            )
        for i, (s, (shape, is_complex)) in enumerate(zip(state, expected)):
            if not isinstance(s, Tensor) or tuple(s.shape) != tuple(shape):
                got = _fmt(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(
                    f"{type(self).__name__} state[{i}] must have shape {_fmt(shape)} for a batch "
                    f"of {batch_size}, got {got}; a state from another batch size cannot be reused"
                )
            if s.is_complex() != is_complex or not (s.is_complex() or s.is_floating_point()):
                kind = "complex" if is_complex else "real floating"
                raise ValueError(f"{type(self).__name__} state[{i}] must be {kind}, got {s.dtype}")
            if (s.real.dtype if is_complex else s.dtype) != x.dtype:
                raise ValueError(
                    f"{type(self).__name__} state[{i}] has dtype {s.dtype}, which "
                    f"does not match x ({x.dtype})"
                )
            if s.device != x.device:
                raise ValueError(
                    f"{type(self).__name__} state[{i}] is on {s.device}, x on {x.device}"
                )
        return tuple(state)

    def _check_x(self, x: Tensor, rank: int, name: str) -> None:
        check_floating(x, name)
        want = "(B, L, D)" if rank == 3 else "(B, D)"
        if x.dim() != rank:
            raise ValueError(
                f"{name} must have shape {want} with D={self.d_model}, "
                f"got rank {x.dim()} shape {_fmt(x.shape)}"
            )
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{name} must have last dimension D={self.d_model}, got shape {_fmt(x.shape)}"
            )
        pdtype = self._param_dtype_device()[0]
        if x.dtype != pdtype:
            raise ValueError(
                f"{name} has dtype {x.dtype} but the layer's parameters are {pdtype}; "
                f"convert one of them (e.g. layer.to({x.dtype}))"
            )
        if x.shape[0] < 1 or (rank == 3 and x.shape[1] < 1):
            raise ValueError(f"{name} must be non-empty, got shape {_fmt(x.shape)}")

    def forward(
        self, x: Tensor, state: State | None = None, resets: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Sequence mode: ``x (B, L, D) -> (y (B, L, D), final_state)``."""
        self._check_x(x, 3, "x")
        batch, length = x.shape[0], x.shape[1]
        resets = check_mask(resets, (batch, length), "resets")
        if state is not None:
            state = self._check_state(state, batch, x)
        return self._forward(x, state, resets)

    def step(
        self, x: Tensor, state: State | None, reset: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Recurrent mode: ``x (B, D) -> (y (B, D), next_state)``; ``reset (B,)`` zeroes first."""
        self._check_x(x, 2, "x")
        batch = x.shape[0]
        reset = check_mask(reset, (batch,), "reset")
        state = self.zeros_like_state(x) if state is None else self._check_state(state, batch, x)
        return self._step(x, zero_where(state, reset))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"
