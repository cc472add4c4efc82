"""GRU and LSTM baselines behind the sequence-layer contract.

The parameters have ``nn.GRUCell`` / ``nn.LSTMCell`` layout. Without resets and outside
``torch.func`` transforms, sequence mode calls torch's fused ``torch.gru`` / ``torch.lstm``;
otherwise it loops over time with the cell, which every transform supports.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backend as _backend
from .base import SequenceLayer, State
from .step_stack import stack_steps


class _RNN(SequenceLayer):
    gates: int
    n_state: int

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        g = self.gates * d_model
        k = 1 / math.sqrt(d_model)
        self.weight_ih = nn.Parameter(torch.empty(g, d_model).uniform_(-k, k))
        self.weight_hh = nn.Parameter(torch.empty(g, d_model).uniform_(-k, k))
        self.bias_ih = nn.Parameter(torch.empty(g).uniform_(-k, k))
        self.bias_hh = nn.Parameter(torch.empty(g).uniform_(-k, k))

    def state_shapes(self, batch_size: int):
        return [((batch_size, self.d_model), False)] * self.n_state

    def _weights(self) -> list[Tensor]:
        return [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]

    def _forward(self, x: Tensor, state: State | None, resets: Tensor | None):
        state = state or self.zeros_like_state(x)
        if resets is None and not _backend.functorch_active():
            return self._fused_sequence(x, state)
        keep = None if resets is None else (~resets).to(x.dtype)
        # unbind / stack_steps rather than x[:, t] / torch.stack: their backwards stay O(L) when
        # differentiated again (MAML), where select's allocates a whole-sequence zero per step
        keeps = None if keep is None else keep.unbind(1)  # (B,) per step
        ys = []
        for t, x_t in enumerate(x.unbind(1)):
            if keeps is not None:
                state = tuple(s * keeps[t][:, None] for s in state)
            y, state = self._step(x_t, state)
            ys.append(y)
        return stack_steps(ys, dim=1), state


class GRU(_RNN):
    """Gated recurrent unit (Cho et al., 2014), ``nn.GRUCell`` equations and layout."""

    gates, n_state = 3, 1

    def _fused_sequence(self, x: Tensor, state: State):
        y, h = torch.gru(
            x, state[0][None], self._weights(), True, 1, 0.0, self.training, False, True
        )
        return y, (h[0],)

    def _step(self, x: Tensor, state: State):
        if _backend.functorch_active():  # explicit cell: vmap has no batching rule for gru_cell
            h = state[0]
            gi_r, gi_z, gi_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, -1)
            gh_r, gh_z, gh_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, -1)
            r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
            h = (1 - z) * torch.tanh(gi_n + r * gh_n) + z * h
        else:
            h = torch.gru_cell(x, state[0], *self._weights())
        return h, (h,)


class LSTM(_RNN):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997); the state is ``(h, c)``."""

    gates, n_state = 4, 2

    def _fused_sequence(self, x: Tensor, state: State):
        h0, c0 = state
        y, h, c = torch.lstm(
            x, (h0[None], c0[None]), self._weights(), True, 1, 0.0, self.training, False, True
        )
        return y, (h[0], c[0])

    def _step(self, x: Tensor, state: State):
        if _backend.functorch_active():  # explicit cell: vmap has no batching rule for lstm_cell
            h, c = state
            gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(
                h, self.weight_hh, self.bias_hh
            )
            i, f, g, o = gates.chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            h, c = torch.lstm_cell(x, state, *self._weights())
        return h, (h, c)
