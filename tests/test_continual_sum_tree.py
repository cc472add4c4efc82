"""SumTree: parent = sum (and min) of children after any batch of updates, prefix search agrees
with a cumulative sum, rebuilds are bit-identical, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from continual.sum_tree import SumTree


def check_invariants(tree: SumTree, leaves: np.ndarray) -> None:
    P = tree.leaf_offset
    for row in range(tree.num_trees):
        s, m = tree._sum[row], tree._min[row]
        np.testing.assert_array_equal(s[P : P + tree.capacity], leaves[row])
        assert np.all(s[P + tree.capacity :] == 0)
        for n in range(1, P):
            assert s[n] == s[2 * n] + s[2 * n + 1]
            assert m[n] == min(m[2 * n], m[2 * n + 1])
        assert tree.total(row) == pytest.approx(leaves[row].sum(), rel=1e-12, abs=1e-300)
        positive = leaves[row][leaves[row] > 0]
        assert tree.min(row) == (positive.min() if positive.size else np.inf)


updates = st.lists(
    st.tuples(
        st.integers(0, 2),  # tree
        st.integers(0, 10_000),  # leaf (taken mod capacity)
        st.one_of(st.just(0.0), st.floats(1e-6, 1e3)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 37), batches=st.lists(updates, min_size=1, max_size=4))
def test_invariants_hold_under_random_batched_updates(capacity, batches):
    tree = SumTree(capacity, num_trees=3)
    leaves = np.zeros((3, capacity))
    for batch in batches:
        rows = np.array([r for r, _, _ in batch])
        idx = np.array([i % capacity for _, i, _ in batch])
        vals = np.array([v for _, _, v in batch])
        tree.update(rows, idx, vals)
        for r, i, v in zip(rows, idx, vals):  # in order: the last write wins
            leaves[r, i] = v
        check_invariants(tree, leaves)
    rebuilt = SumTree(capacity, num_trees=3)
    rebuilt.load_leaves(tree.all_leaves())
    np.testing.assert_array_equal(rebuilt._sum, tree._sum)
    np.testing.assert_array_equal(rebuilt._min, tree._min)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.one_of(st.just(0.0), st.floats(0.01, 100.0)), min_size=1, max_size=50),
    seed=st.integers(0, 2**31 - 1),
)
def test_find_prefix_matches_cumulative_sum(values, seed):
    vals = np.array(values)
    if vals.sum() == 0:
        vals[0] = 1.0
    tree = SumTree(len(vals), num_trees=2)
    tree.update(1, np.arange(len(vals)), vals)
    rng = np.random.default_rng(seed)
    targets = rng.uniform(0, tree.total(1), size=200)
    got = tree.find_prefix(1, targets)
    cum = np.cumsum(vals)
    want = np.searchsorted(cum, targets, side="right")
    # away from the bucket edges the answer is unambiguous
    clear = np.min(np.abs(targets[:, None] - cum[None, :]), axis=1) > 1e-9 * cum[-1]
    np.testing.assert_array_equal(got[clear], want[clear])
    assert np.all(vals[got] > 0), "the descent landed on an empty leaf"


def test_targets_at_or_past_the_total_land_on_the_last_nonempty_leaf():
    tree = SumTree(8)
    tree.update(0, [1, 2, 5], [1.0, 2.0, 3.0])
    assert tree.find_prefix(0, [tree.total(0), tree.total(0) * (1 + 1e-15)]).tolist() == [5, 5]
    assert tree.find_prefix(0, [0.0]).tolist() == [1]


def test_one_descent_serves_several_trees():
    tree = SumTree(4, num_trees=2)
    tree.update([0, 0, 1, 1], [0, 3, 1, 2], [1.0, 1.0, 5.0, 5.0])
    out = tree.find_prefix([0, 0, 1, 1], [0.5, 1.5, 4.9, 5.1])
    assert out.tolist() == [0, 3, 1, 2]


def test_bad_input_is_refused():
    tree = SumTree(4)
    with pytest.raises(ValueError, match="finite and >= 0"):
        tree.update(0, [0], [-1.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        tree.update(0, [0], [np.nan])
    with pytest.raises(ValueError, match=r"leaf index out of range \[0, 4\)"):
        tree.update(0, [4], [1.0])
    with pytest.raises(ValueError, match="tree index out of range"):
        tree.update(1, [0], [1.0])
    with pytest.raises(ValueError, match="matching sizes"):
        tree.update(0, [0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="must be integers"):
        tree.update(0, [0.5], [1.0])
    with pytest.raises(ValueError, match="empty tree"):
        tree.find_prefix(0, [0.0])
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        SumTree(0)
