"""ReplayBuffer: chunks stay intact across ring eviction, prioritized frequencies follow p^α,
stage proportions (with top-up) are honoured, importance weights match a hand computation,
stored states reproduce the recorded policy outputs, snapshots restore bit-for-bit, memmap
storage and uint8 observations work, and bad input raises ValueError."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from scipy import stats

import ssm
from continual.replay import (
    TRAJECTORY_FIELDS,
    ReplayBuffer,
    ReplayConfig,
    allocate_counts,
)
from metarl import Rollout, make_family
from metarl.objectives import policy_evaluate
from metarl.run_dir import RunDir


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def counter_data(T: int, B: int, offset: int = 0, obs_dim: int = 2) -> dict[str, torch.Tensor]:
    """``obs[t, b, 0]`` = a global step counter, so a chunk's origin can be read off its data."""
    step = offset + torch.arange(B)[None, :] * T + torch.arange(T)[:, None]  # (T, B)
    obs = step[..., None].repeat(1, 1, obs_dim).to(torch.float32)
    return {
        "obs": obs,
        "rewards": torch.randn(T, B, generator=gen(offset)),
        "terminated": torch.zeros(T, B, dtype=torch.bool),
    }


def fill(buf: ReplayBuffer, stage: int, n_seq: int, T: int, offset: int = 0) -> int:
    return buf.add_sequences(counter_data(T, n_seq, offset), stage)


# -- storage and chunking ------------------------------------------------------------------------
def test_chunk_starts_cover_the_sequence_with_stride_and_tail():
    buf = ReplayBuffer(ReplayConfig(capacity=1000, seq_len=8, burn_in=2))
    assert buf.chunk_starts(10).tolist() == [0]
    assert buf.chunk_starts(26).tolist() == [0, 8, 16]
    assert buf.chunk_starts(27).tolist() == [0, 8, 16, 17]  # tail chunk ends at T
    with pytest.raises(ValueError, match=r"at least burn_in \+ seq_len = 10 steps, got T=9"):
        buf.chunk_starts(9)


def test_chunks_stay_intact_and_old_ones_are_evicted_as_the_ring_wraps():
    T, L = 13, 5
    buf = ReplayBuffer(ReplayConfig(capacity=100, seq_len=3, burn_in=2, stride=3))
    offset = 0
    for i in range(12):  # 12 * 3 * 13 = 468 steps through a ring of 100
        buf.add_sequences(counter_data(T, 3, offset), stage=i % 3)
        offset += 3 * T
        batch = buf.sample(64, gen(i))
        first = batch.data["obs"][..., 0]  # (L, B) global step counters
        assert first.shape == (L, 64)
        # consecutive steps of one sequence, never crossing into the next one
        assert torch.all(first[1:] - first[:-1] == 1)
        assert torch.all(first[0] // T == first[-1] // T)
        # only steps the ring still holds
        assert first.min() >= offset - buf.capacity
        assert buf.num_transitions == min(offset, 100)
    sizes = buf.stage_sizes()
    assert sum(sizes.values()) == len(buf)
    assert len(buf) <= buf.item_capacity


def test_a_full_item_table_drops_the_oldest_items():
    buf = ReplayBuffer(ReplayConfig(capacity=1000, seq_len=4, max_items=6))
    fill(buf, stage=0, n_seq=4, T=4)  # keys 0..3
    fill(buf, stage=1, n_seq=4, T=4, offset=100)  # keys 4..7: drops 0 and 1
    assert len(buf) == 6 and buf.stage_sizes() == {0: 2, 1: 4}
    assert sorted(buf.priorities(0)) == [2, 3]
    first = buf.sample(64, gen()).data["obs"][0, :, 0]
    assert not any(v in (0.0, 4.0) for v in first.tolist())  # the dropped chunks' first steps
    with pytest.raises(ValueError, match="makes 8 items, more than max_items = 6"):
        fill(buf, stage=0, n_seq=8, T=4)


def test_uint8_observations_stay_uint8_and_storage_is_close_to_raw():
    T, B = 16, 4
    frames = torch.randint(0, 256, (T, B, 8, 8, 3), dtype=torch.uint8, generator=gen())
    data = {"obs": frames, "rewards": torch.zeros(T, B), "resets": torch.zeros(T, B, dtype=bool)}
    buf = ReplayBuffer(ReplayConfig(capacity=T * B, seq_len=8))
    buf.add_sequences(data, stage=0)
    assert buf._ring.arrays["obs"].dtype == np.uint8
    assert buf.fields["obs"] == ((8, 8, 3), np.dtype(np.uint8))
    batch = buf.sample(5, gen())
    assert batch.data["obs"].dtype == torch.uint8
    assert batch.data["resets"].dtype == torch.bool
    raw = 8 * 8 * 3 + 4 + 1
    assert buf._ring.nbytes == T * B * raw
    # items and trees add little: under 10% here, with only 8 items per 64 steps
    assert buf.nbytes < 1.1 * T * B * raw + 2048
    with pytest.raises(ValueError, match="expected per-step shape .* dtype uint8.*never casts"):
        buf.add_sequences({**data, "obs": frames.float()}, stage=0)


def test_memmap_storage_matches_memory_storage(tmp_path):
    cfg = ReplayConfig(capacity=200, seq_len=4, burn_in=1, alpha=0.5)
    mem = ReplayBuffer(cfg)
    disk = ReplayBuffer(
        ReplayConfig(**{**cfg.__dict__, "storage": "memmap", "directory": str(tmp_path / "buf")})
    )
    for i in range(6):
        for buf in (mem, disk):
            fill(buf, stage=i % 2, n_seq=3, T=20, offset=60 * i)
    a, b = mem.sample(32, gen(3)), disk.sample(32, gen(3))
    for k in a.data:
        assert torch.equal(a.data[k], b.data[k])
    assert torch.equal(a.weights, b.weights)
    assert (tmp_path / "buf" / "obs.npy").exists()
    disk.flush()
    on_disk = np.load(tmp_path / "buf" / "obs.npy", mmap_mode="r")
    np.testing.assert_array_equal(on_disk, mem._ring.arrays["obs"])
    # a memory snapshot restores into memmap storage
    moved = ReplayBuffer.from_state_dict(mem.state_dict(), "memmap", str(tmp_path / "moved"))
    c = moved.sample(32, gen(9))
    d = mem.sample(32, gen(9))
    assert torch.equal(c.data["obs"], d.data["obs"])


# -- priorities ----------------------------------------------------------------------------------
def test_sampled_frequencies_follow_priority_to_the_alpha():
    alpha = 0.7
    buf = ReplayBuffer(ReplayConfig(capacity=1000, seq_len=4, alpha=alpha, priority_eps=0.0))
    fill(buf, stage=0, n_seq=40, T=4)  # 40 items
    rng = np.random.default_rng(0)
    prio = rng.uniform(0.05, 5.0, size=40)
    keys = np.arange(40)
    buf.update_priorities(keys, prio)
    counts = np.zeros(40)
    g = gen(1)
    for _ in range(200):
        batch = buf.sample(128, g)
        counts += np.bincount(batch.keys.numpy(), minlength=40)
    expected = prio**alpha / np.sum(prio**alpha) * counts.sum()
    _, p_value = stats.chisquare(counts, expected)
    assert p_value > 1e-3, p_value
    # and a real difference is caught: alpha = 1 frequencies do not fit
    _, p_wrong = stats.chisquare(counts, prio / prio.sum() * counts.sum())
    assert p_wrong < 1e-6


def test_importance_weights_match_a_hand_computation():
    # α = 1, ε = 0: stage 0 holds priorities [1, 3] (N=2, P = 1/4, 3/4); stage 1 holds [2] (N=1,
    # P = 1). β = 1: w = (N P)^-1 = 2, 2/3 and 1; the largest possible is 2, so 1, 1/3, 1/2.
    buf = ReplayBuffer(ReplayConfig(capacity=100, seq_len=4, alpha=1.0, priority_eps=0.0))
    fill(buf, stage=0, n_seq=2, T=4)
    fill(buf, stage=1, n_seq=1, T=4, offset=100)
    buf.update_priorities([0, 1, 2], [1.0, 3.0, 2.0])
    want = {0: 1.0, 1: 1 / 3, 2: 0.5}
    seen = set()
    for i in range(20):
        batch = buf.sample(6, gen(i), beta=1.0)
        for k, w in zip(batch.keys.tolist(), batch.weights.tolist()):
            assert w == pytest.approx(want[k], rel=1e-6)
            seen.add(k)
    assert seen == {0, 1, 2}
    # β = 0.5: the same, square-rooted
    batch = buf.sample(6, gen(0), beta=0.5)
    for k, w in zip(batch.keys.tolist(), batch.weights.tolist()):
        assert w == pytest.approx(want[k] ** 0.5, rel=1e-6)


def test_zero_priorities_without_eps_are_never_drawn():
    buf = ReplayBuffer(ReplayConfig(capacity=100, seq_len=4, alpha=1.0, priority_eps=0.0))
    fill(buf, stage=0, n_seq=2, T=4)
    fill(buf, stage=1, n_seq=2, T=4, offset=50)
    buf.update_priorities([0, 1, 2], [0.0, 0.0, 0.0])  # stage 0 all zero, key 3 left at 1
    batch = buf.sample(8, gen())
    assert batch.keys.tolist() == [3] * 8 and torch.all(batch.weights == 1)
    buf.update_priorities([3], [0.0])
    with pytest.raises(ValueError, match="all priorities 0"):
        buf.sample(8, gen())


def test_beta_anneals_linearly_and_new_items_get_the_max_priority():
    buf = ReplayBuffer(ReplayConfig(capacity=100, seq_len=4, beta=0.4, beta_anneal_samples=10))
    fill(buf, stage=0, n_seq=2, T=4)
    assert [buf.sample(2, gen()).beta for _ in range(12)][::5] == pytest.approx([0.4, 0.7, 1.0])
    buf.update_priorities([0], [9.0])
    fill(buf, stage=0, n_seq=1, T=4, offset=50)
    prio = buf.priorities(0)
    assert prio[2] == pytest.approx(prio[0]) and prio[2] > prio[1]


def test_update_priorities_skips_evicted_items():
    buf = ReplayBuffer(ReplayConfig(capacity=8, seq_len=4))
    fill(buf, stage=0, n_seq=2, T=4)  # keys 0, 1
    batch = buf.sample(2, gen())
    fill(buf, stage=0, n_seq=2, T=4, offset=8)  # evicts keys 0, 1
    assert buf.update_priorities(batch.keys, torch.ones(2)) == 0
    assert sorted(buf.priorities(0)) == [2, 3]


# -- stage proportions ---------------------------------------------------------------------------
def stage_counts(batch) -> dict[int, int]:
    values, counts = np.unique(batch.stages.numpy(), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def test_stage_proportions_split_old_share_by_size():
    buf = ReplayBuffer(ReplayConfig(capacity=10_000, seq_len=4, current_fraction=0.5))
    fill(buf, stage=0, n_seq=30, T=4)  # 30 items
    fill(buf, stage=1, n_seq=10, T=4, offset=1000)  # 10 items
    fill(buf, stage=2, n_seq=50, T=4, offset=2000)  # 50 items, current
    assert buf.current_stage == 2
    batch = buf.sample(40, gen())
    assert stage_counts(batch) == {2: 20, 0: 15, 1: 5}
    assert batch.stages[:20].eq(2).all(), "the current stage comes first"


def test_stage_proportions_split_old_share_by_recency():
    cfg = ReplayConfig(capacity=10_000, seq_len=4, current_fraction=0.25, old_split="recency")
    buf = ReplayBuffer(cfg)
    for s in range(4):
        fill(buf, stage=s, n_seq=50, T=4, offset=1000 * s)
    # current 3 gets 25%; old 2, 1, 0 weigh 1, 1/2, 1/4 of the remaining 75%
    assert stage_counts(buf.sample(28, gen())) == {3: 7, 2: 12, 1: 6, 0: 3}
    assert buf.stage_weights() == pytest.approx(
        {3: 0.25, 2: 0.75 * 4 / 7, 1: 0.75 * 2 / 7, 0: 0.75 / 7}
    )
    buf.set_current_stage(1)
    assert stage_counts(buf.sample(28, gen())) == {1: 7, 3: 12, 2: 6, 0: 3}


def test_a_short_pool_is_topped_up_from_the_others():
    buf = ReplayBuffer(ReplayConfig(capacity=10_000, seq_len=4, current_fraction=0.5))
    fill(buf, stage=0, n_seq=30, T=4)
    fill(buf, stage=1, n_seq=90, T=4, offset=1000)
    fill(buf, stage=2, n_seq=5, T=4, offset=2000)  # current, only 5 items
    counts = stage_counts(buf.sample(64, gen()))
    assert counts[2] == 5  # capped at its size; the other 27 of its 32 go to the old stages
    assert counts == {2: 5, 0: 15, 1: 44}  # 59 split 1:3 by size -> 14.75, 44.25
    # no old stages at all: the whole batch from the current one
    solo = ReplayBuffer(ReplayConfig(capacity=10_000, seq_len=4, current_fraction=0.3))
    fill(solo, stage=7, n_seq=50, T=4)
    assert stage_counts(solo.sample(32, gen())) == {7: 32}
    # current_fraction = 1 and a short current pool: the zero-weight old stages fill in
    full = ReplayBuffer(ReplayConfig(capacity=10_000, seq_len=4, current_fraction=1.0))
    fill(full, stage=0, n_seq=40, T=4)
    fill(full, stage=1, n_seq=3, T=4, offset=1000)
    assert stage_counts(full.sample(16, gen())) == {1: 3, 0: 13}
    # fewer items than the batch: repeats, in the configured proportions
    tiny = ReplayBuffer(ReplayConfig(capacity=10_000, seq_len=4, current_fraction=0.5))
    fill(tiny, stage=0, n_seq=2, T=4)
    fill(tiny, stage=1, n_seq=2, T=4, offset=1000)
    assert stage_counts(tiny.sample(10, gen())) == {1: 5, 0: 5}


def test_allocate_counts_rounds_by_largest_remainder_and_respects_caps():
    assert allocate_counts(10, np.array([1, 1, 1])).tolist() == [4, 3, 3]
    assert allocate_counts(10, np.array([0.5, 0.3, 0.2]), np.array([2, 10, 10])).tolist() == [
        2,
        5,
        3,
    ]
    with pytest.raises(ValueError, match="caps hold 3 < 4"):
        allocate_counts(4, np.array([1.0, 1.0]), np.array([1, 2]))


# -- recurrent state -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rollout_data():
    torch.manual_seed(0)
    family = make_family("nav2d")
    envs = family.make_vector_env(family.sample(3, seed=0), seed=0)
    policy = ssm.SequencePolicy(
        family.observation_space,
        family.action_space,
        kind="gru",
        d_model=8,
        n_layers=1,
        in_context=True,
    ).double()
    rollout = Rollout(policy, envs, generator=gen(0), seed=0)
    with torch.no_grad():
        trajs = [rollout.collect(37) for _ in range(2)]
    envs.close()
    return policy, trajs


def test_stored_states_reproduce_the_recorded_policy_outputs(rollout_data):
    policy, trajs = rollout_data
    buf = ReplayBuffer(ReplayConfig(capacity=1000, seq_len=8, burn_in=3))
    for i, traj in enumerate(trajs):
        assert buf.chunk_starts(traj.T).tolist() == [0, 8, 16, 24, 26]
        assert buf.add_trajectory(traj, stage=i, policy=policy) == 3 * 5
    batch = buf.sample(24, gen())
    assert set(batch.data) == set(TRAJECTORY_FIELDS)
    replayed = batch.to_trajectory()
    assert (replayed.T, replayed.B) == (11, 24)
    ev = policy_evaluate(policy, None, replayed)
    torch.testing.assert_close(ev.values, replayed.values, rtol=0, atol=1e-12)
    torch.testing.assert_close(ev.log_probs, replayed.log_probs, rtol=0, atol=1e-12)
    # without a policy: chunk 0 keeps the trajectory's (carried, non-zero) initial state, later
    # chunks get the zero state
    plain = ReplayBuffer(ReplayConfig(capacity=1000, seq_len=8, burn_in=3))
    plain.add_trajectory(trajs[1], stage=0)
    zb = plain.sample(15, gen())
    (h,) = zb.initial_state[0]  # (15, d) GRU state
    (h0,) = trajs[1].initial_state[0]  # (3, d)
    assert h0.abs().sum() > 0
    n_first = 0
    for i in range(15):
        starts_seq = [b for b in range(3) if torch.equal(zb.data["obs"][0, i], trajs[1].obs[0, b])]
        if starts_seq:
            n_first += 1
            assert torch.equal(h[i], h0[starts_seq[0]])
        else:
            assert torch.all(h[i] == 0)
    assert 0 < n_first < 15


def test_snapshot_restore_gives_identical_samples(rollout_data):
    policy, trajs = rollout_data
    cfg = ReplayConfig(capacity=150, seq_len=8, burn_in=2, alpha=0.6)
    buf = ReplayBuffer(cfg)
    buf.add_trajectory(trajs[0], stage=0, policy=policy)
    buf.add_trajectory(trajs[1], stage=1, policy=policy)  # wraps the ring
    b0 = buf.sample(16, gen(1))
    buf.update_priorities(b0.keys, torch.rand(16, generator=gen(2)))
    state = buf.state_dict()
    json.dumps(state["meta"])
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    restored = ReplayBuffer(cfg)
    restored.load_state_dict(torch.load(blob, weights_only=True))
    copies = [restored, ReplayBuffer.from_state_dict(state)]

    def assert_same(a, b):
        for k in a.data:
            assert torch.equal(a.data[k], b.data[k]), k
        assert torch.equal(a.weights, b.weights) and torch.equal(a.keys, b.keys)
        assert torch.equal(a.stages, b.stages) and a.beta == b.beta
        for x, y in zip(pytree.tree_leaves(a.initial_state), pytree.tree_leaves(b.initial_state)):
            assert torch.equal(x, y)

    for i in range(3):
        a = buf.sample(16, gen(10 + i))
        for other in copies:
            assert_same(a, other.sample(16, gen(10 + i)))
    # and they carry on identically after more data
    for b in (buf, *copies):
        b.add_trajectory(trajs[0], stage=2, policy=policy)
    a = buf.sample(8, gen(5))
    for other in copies:
        assert_same(a, other.sample(8, gen(5)))
    with pytest.raises(ValueError, match="schema_version 99 is not supported"):
        ReplayBuffer(cfg).load_state_dict({**state, "schema_version": 99})
    with pytest.raises(ValueError, match="snapshot config differs.*seq_len"):
        ReplayBuffer(ReplayConfig(capacity=150, seq_len=4, burn_in=2)).load_state_dict(state)


def test_snapshot_goes_through_a_run_dir_checkpoint(tmp_path):
    buf = ReplayBuffer(ReplayConfig(capacity=100, seq_len=4, burn_in=1))
    fill(buf, stage=3, n_seq=4, T=10)
    run = RunDir.create(tmp_path, "replay", None, seed=0)
    run.save_checkpoint(7, {"replay": buf.state_dict()})
    restored = ReplayBuffer.from_state_dict(run.load_checkpoint()["replay"])
    assert torch.equal(buf.sample(8, gen()).data["obs"], restored.sample(8, gen()).data["obs"])


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input_raises_value_errors():
    with pytest.raises(ValueError, match="current_fraction must be in"):
        ReplayBuffer(ReplayConfig(current_fraction=1.5))
    with pytest.raises(ValueError, match="old_split must be"):
        ReplayBuffer(ReplayConfig(old_split="age"))
    with pytest.raises(ValueError, match="needs a directory"):
        ReplayBuffer(ReplayConfig(storage="memmap"))
    with pytest.raises(ValueError, match="exceeds capacity"):
        ReplayBuffer(ReplayConfig(capacity=10, seq_len=8, burn_in=4))
    with pytest.raises(ValueError, match="unknown fields"):
        ReplayBuffer(ReplayConfig(fields=("obs", "weights")))
    buf = ReplayBuffer(ReplayConfig(capacity=50, seq_len=4))
    with pytest.raises(ValueError, match="empty replay buffer"):
        buf.sample(4, gen())
    with pytest.raises(ValueError, match=r"exceed the capacity 50"):
        fill(buf, stage=0, n_seq=13, T=4)
    with pytest.raises(ValueError, match=r"every field must be \(T=4, B=2"):
        buf.add_sequences({"obs": torch.zeros(4, 2), "r": torch.zeros(4, 3)}, stage=0)
    with pytest.raises(ValueError, match="stage must be an int or B=2 ints"):
        buf.add_sequences(counter_data(4, 2), stage=1.5)
    with pytest.raises(ValueError, match="stage must be an int or B=2 ints"):
        buf.add_sequences(counter_data(4, 2), stage=[0, 1, 2])
    with pytest.raises(ValueError, match=r"state leaves must be \(B=2, K=1 chunks"):
        buf.add_sequences(counter_data(4, 2), stage=0, states=(torch.zeros(2, 3, 5),))
    fill(buf, stage=0, n_seq=2, T=4)
    with pytest.raises(ValueError, match="differ from the stored fields"):
        buf.add_sequences({"obs": torch.zeros(4, 2, 2)}, stage=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        buf.sample(0, gen())
    with pytest.raises(ValueError, match="unknown current stage 5"):
        buf.sample(4, gen(), current_stage=5)
    with pytest.raises(ValueError, match="priorities must be finite and >= 0"):
        buf.update_priorities([0], [-1.0])
    with pytest.raises(ValueError, match="keys and priorities must match"):
        buf.update_priorities([0, 1], [1.0])
    with pytest.raises(ValueError, match="not a replay snapshot"):
        buf.load_state_dict({"fields": {}})
    with pytest.raises(ValueError, match="must be a metarl Trajectory"):
        buf.add_trajectory(counter_data(4, 2), stage=0)
