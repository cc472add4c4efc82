"""Reptile: move the initialisation toward the adapted parameters."""

from __future__ import annotations

from . import functional as F
from .base import MetaGradient, MetaLearner, Support, exact
from .functional import Params


class Reptile(MetaLearner):
    """Reptile (Nichol, Achiam & Schulman, 2018, "On First-Order Meta-Learning Algorithms").

    Per task, ``K`` first-order inner steps give ``φ_K``; the meta-"gradient" is
    ``θ - mean_tasks φ_K``, so an SGD outer step of size ε is ``θ ← θ + ε (mean φ_K - θ)``:
    the initialisation moves toward the adapted parameters. Query trajectories are not used.
    """

    algo = "reptile"

    @exact
    def adapt(self, params: Params | None, support, steps: int | None = None) -> Params:
        support = self._batch(support)
        phi = self._theta(params)
        for k in range(self._steps(support, steps)):
            phi = self.inner_step(phi, self._support_at(support, k), k)
        return F.detach(phi)

    @exact
    def meta_gradient(
        self, supports: Support, query=None, first_order=None, iteration: int = 0
    ) -> MetaGradient:
        theta = self.params()
        adapted = self.adapt_tasks(theta, supports)
        grads = {k: theta[k] - adapted[k].mean(0) for k in theta}
        sq_dist = sum(((adapted[k] - theta[k]) ** 2).flatten(1).sum(1) for k in theta)  # (N,)
        stats = {"adapt_distance": float(sq_dist.sqrt().mean())}
        return MetaGradient(self._with_value(grads, self._batch(supports), stats), None, stats)
