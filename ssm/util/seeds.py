"""Seed derivation: every random stream of a run comes from the run's seed through one function.

``derive_seed(seed, *keys)`` hashes the run seed and a path of keys (an iteration, a stage, a
purpose name) with numpy's :class:`~numpy.random.SeedSequence` (``entropy=seed``,
``spawn_key=keys``), whose output is stable across numpy versions and platforms. Distinct key
paths give statistically independent seeds, unlike hand-written sums such as
``seed * 1_000_003 + iteration``, which collide for some (seed, iteration) pairs.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["derive_seed", "legacy_stream_seed"]

_STR_KEY_OFFSET = 2**64
"""String keys map to integers at or above this, so no string collides with an integer key."""


def _key_int(key: int | str) -> int:
    if isinstance(key, bool) or not isinstance(key, int | str | np.integer):
        raise ValueError(f"seed keys must be ints or strings, got {type(key).__name__} {key!r}")
    if isinstance(key, str):
        digest = hashlib.sha256(key.encode("utf-8")).digest()[:16]
        return _STR_KEY_OFFSET + int.from_bytes(digest, "little")
    key = int(key)
    if not 0 <= key < _STR_KEY_OFFSET:
        raise ValueError(f"integer seed keys must be in [0, 2**64), got {key}")
    return key


def derive_seed(seed: int, *keys: int | str, bits: int = 63) -> int:
    """A seed in ``[0, 2**bits)`` derived from the run ``seed`` and the key path ``keys``.

    Deterministic, and distinct key paths (or seeds) give independent-looking values. ``bits`` is
    63 by default (fits a signed 64-bit integer, as ``torch.Generator.manual_seed`` and
    ``numpy.random.default_rng`` take); 31 or 32 for APIs that want 32-bit seeds (gymnasium
    spaces, some C libraries). Raises ``ValueError`` for a negative or non-integer seed, a key
    that is neither a non-negative int below 2**64 nor a string, or ``bits`` outside 1..64.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {type(seed).__name__} {seed!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 64:
        raise ValueError(f"bits must be an int in 1..64, got {bits!r}")
    spawn_key = tuple(_key_int(k) for k in keys)
    words = np.random.SeedSequence(entropy=int(seed), spawn_key=spawn_key).generate_state(
        1, np.uint64
    )
    return int(words[0]) >> (64 - bits)


LEGACY_STRIDE = 1_000_003


def legacy_stream_seed(seed: int, offset: int) -> int:
    """``seed * 1_000_003 + offset``: the derivation every committed result was produced with
    (the per-iteration task and env seeds of PPO, RL², the MAML family, the population and the
    continual stages, each with its own ``offset``, e.g. ``iteration`` or ``101 * iteration``).

    Kept, in this one place, so that those results reproduce with their commands. New streams use
    :func:`derive_seed`. Switching the old ones over changes every learning curve in
    ``experiments/results`` and means re-running them (see the README's note on seeds).
    """
    return int(seed) * LEGACY_STRIDE + int(offset)
