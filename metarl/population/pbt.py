"""Population-based training over the learners' hyperparameters (Jaderberg et al., 2017).

Every ``interval`` iterations the members are ranked by fitness (recent mean episodic return).
Each member in the bottom ``fraction`` **exploits** a uniformly chosen member of the top
``fraction``: it takes an exact copy of its parameters, optimiser moments, hyperparameters and
self-play pool (:meth:`MultiAgentLearner.load_state_dict` with ``learning_state=False``; its own
random generator and counter stay). It then **explores**: each hyperparameter (``learning_rate``,
``ent_coef``) is multiplied by a factor drawn from ``perturb`` and clipped to its bounds.

The schedule's own state is its generator (:meth:`PBT.state_dict`, for checkpoints).
"""

from __future__ import annotations

import json

import numpy as np

from .config import PBTConfig

__all__ = ["PBT", "exploit"]


def exploit(source, target) -> None:
    """``target`` becomes an exact, unaliased copy of ``source``'s learning state."""
    target.load_state_dict(source.state_dict(), learning_state=False)


class PBT:
    """The exploit/explore schedule over a list of :class:`MultiAgentLearner` members."""

    def __init__(self, cfg: PBTConfig, seed: int):
        if not 0.0 < cfg.fraction <= 0.5:
            raise ValueError(f"pbt.fraction must be in (0, 0.5], got {cfg.fraction}")
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.bounds = {"learning_rate": cfg.lr_bounds, "ent_coef": cfg.ent_bounds}

    def state_dict(self) -> dict:
        """The generator's state (plain scalars and strings: a weights-only checkpoint)."""
        return {"rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])

    def due(self, iteration: int) -> bool:
        return iteration > 0 and iteration % self.cfg.interval == 0

    def explore(self, hparams: dict[str, float]) -> dict[str, float]:
        out = {}
        for name, value in hparams.items():
            lo, hi = self.bounds[name]
            factor = float(self.rng.choice(self.cfg.perturb))
            out[name] = float(np.clip(value * factor, lo, hi))
        return out

    def step(self, members: list, fitness: list[float]) -> list[dict]:
        """Exploit and explore; returns one event ``{"target", "source", "hparams"}`` per copy."""
        n = len(members)
        k = max(1, int(n * self.cfg.fraction)) if n > 1 else 0
        order = np.argsort(np.nan_to_num(np.asarray(fitness, np.float64), nan=-np.inf))
        bottom, top = order[:k], order[n - k :]
        events = []
        for target in bottom:
            source = int(self.rng.choice(top))
            if source == int(target):
                continue
            exploit(members[source], members[int(target)])
            members[int(target)].hparams = self.explore(members[int(target)].hparams)
            events.append(
                {
                    "target": int(target),
                    "source": source,
                    "hparams": dict(members[int(target)].hparams),
                }
            )
        return events
