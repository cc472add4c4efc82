"""The rollout engine and ``Trajectory``: recorded fields, state carry and resets, truncation
bootstrapping, trial mode, in-context inputs, and continuity across ``collect`` calls.

The central check re-evaluates the recorded trajectory in sequence mode with ``policy_evaluate``
(from ``initial_state``, with the recorded ``resets``): it reproduces the values recorded while
stepping only if the engine carried and reset the recurrent state exactly as it says it did.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from torch.func import functional_call, grad

import ssm
from metarl.objectives import gae, policy_evaluate, vpg_loss
from metarl.rollout import Rollout
from metarl.trajectory import Trajectory

SAME_STEP = gym.vector.AutoresetMode.SAME_STEP


class CountEnv(gym.Env):
    """Episodes of ``length`` steps that end terminated or truncated; noisy observations (so seeds
    matter), reward depends on the action, ``info["success"] = 1`` on the last step only."""

    def __init__(self, length: int, terminal: bool, action_space: gym.Space | None = None):
        self.length, self.terminal = length, terminal
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = action_space or gym.spaces.Discrete(3)
        self.received: list[np.ndarray] = []

    def _obs(self) -> np.ndarray:
        noise = self.np_random.normal(size=2)
        return np.array([self.t / self.length, *noise], dtype=np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.received.append(np.asarray(action))
        self.t += 1
        reward = 1.0 + 0.5 * float(np.asarray(action, dtype=np.float64).sum()) + self.t * 0.01
        end = self.t >= self.length
        info = {"success": float(end)}
        return self._obs(), reward, end and self.terminal, end and not self.terminal, info


SPECS = [(3, True), (4, False), (5, True), (2, False)]  # staggered ends, both kinds


def make_envs(specs=SPECS, action_space=None):
    return gym.vector.SyncVectorEnv(
        [lambda n=n, term=term: CountEnv(n, term, action_space) for n, term in specs],
        autoreset_mode=SAME_STEP,
    )


def make_policy(envs, kind="gru", in_context=False, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    policy = ssm.SequencePolicy(
        envs.single_observation_space,
        envs.single_action_space,
        kind=kind,
        d_model=8,
        n_layers=1,
        in_context=in_context,
        encoder_hidden=16,
    )
    with torch.no_grad():  # move the near-zero head initialisations off zero
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy.to(dtype)


def make_rollout(policy, envs, seed=0, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    return Rollout(policy, envs, generator=gen, seed=seed, **kwargs)


def assert_trajs_equal(a: Trajectory, b: Trajectory):
    for x, y in zip(pytree.tree_leaves(a), pytree.tree_leaves(b), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def shift(x: torch.Tensor, first) -> torch.Tensor:
    """x[t-1] at step t, ``first`` at t=0."""
    return torch.cat([torch.full_like(x[:1], first), x[:-1]])


# -- fields -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "action_space",
    [
        gym.spaces.Discrete(3),
        gym.spaces.MultiDiscrete([2, 3]),
        gym.spaces.Box(-0.1, 0.1, (2,), np.float32),
    ],
    ids=["discrete", "multidiscrete", "box"],
)
def test_every_field_has_its_documented_shape(action_space):
    envs = make_envs(action_space=action_space)
    policy = make_policy(envs)
    T, B = 7, envs.num_envs
    traj = make_rollout(policy, envs).collect(T)
    a_shape = tuple(action_space.shape)
    assert (traj.T, traj.B) == (T, B)
    assert traj.obs.shape == (T, B, 3) and traj.obs.dtype == torch.float32
    assert traj.actions.shape == (T, B, *a_shape) and traj.prev_actions.shape == traj.actions.shape
    for name in ("rewards", "log_probs", "values", "success", "prev_rewards", "bootstrap_values"):
        assert getattr(traj, name).shape == (T, B), name
        assert getattr(traj, name).dtype == torch.float32, name
    for name in ("terminated", "truncated", "resets", "prev_dones", "trial_ends"):
        assert getattr(traj, name).shape == (T, B) and getattr(traj, name).dtype == torch.bool
    assert traj.dist_params.shape[:2] == (T, B)
    assert traj.last_value.shape == traj.start_returns.shape == traj.task_ids.shape == (B,)
    assert traj.initial_state[0][0].shape[0] == B
    # recorded log-probs are those of the recorded (sampled, unclipped) actions
    ev = policy_evaluate(policy, None, traj)
    torch.testing.assert_close(ev.log_probs, traj.log_probs, atol=1e-5, rtol=1e-5)
    if isinstance(action_space, gym.spaces.Box):
        assert traj.actions.abs().max() > 0.1  # sampled beyond the bounds ...
        sent = np.stack([a for env in envs.envs for a in env.received])
        assert np.abs(sent).max() <= 0.1 + 1e-7  # ... but clipped on the way to the env


def test_rejects_envs_not_in_same_step_autoreset_mode():
    envs = gym.vector.SyncVectorEnv([lambda: CountEnv(3, True)])
    with pytest.raises(ValueError, match="SAME_STEP"):
        Rollout(make_policy(envs), envs)


def test_episode_ends_success_and_returns_are_recorded():
    traj = make_rollout(make_policy(make_envs()), make_envs()).collect(12)
    for b, (length, terminal) in enumerate(SPECS):
        ends = (torch.arange(12) + 1) % length == 0
        assert torch.equal(traj.dones[:, b], ends)
        assert torch.equal(traj.terminated[:, b], ends & terminal)
        # success comes from the finished episode's info (final_info), not the reset's
        assert torch.equal(traj.success[:, b], ends.float())
    expected = []
    running = torch.zeros(4, dtype=torch.float64)
    for t in range(12):
        running += traj.rewards[t].double()
        expected += running[traj.dones[t]].tolist()
        running[traj.dones[t]] = 0
    assert traj.episode_returns() == pytest.approx(expected)
    assert traj.episode_successes() == [1.0] * len(expected)


# -- state carry and resets ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,dtype,tol",
    [("gru", torch.float32, 1e-5), ("mamba", torch.float32, 1e-5), ("mamba", torch.float64, 1e-10)],
)
def test_state_resets_exactly_at_episode_boundaries(kind, dtype, tol):
    envs = make_envs()
    policy = make_policy(envs, kind=kind, dtype=dtype)
    traj = make_rollout(policy, envs).collect(13)
    # a reset before step 0 (fresh episodes) and after every episode end, nowhere else
    assert torch.equal(traj.resets, shift(traj.dones, True))
    assert torch.equal(traj.trial_ends, traj.dones)
    ev = policy_evaluate(policy, None, traj)
    torch.testing.assert_close(ev.values, traj.values, atol=tol, rtol=tol)
    torch.testing.assert_close(ev.log_probs, traj.log_probs, atol=tol, rtol=tol)
    torch.testing.assert_close(ev.dist_params, traj.dist_params, atol=tol, rtol=tol)
    # the check has teeth: without the resets the sequence-mode values differ
    no_resets = Trajectory(**{**traj.as_dict(), "resets": torch.zeros_like(traj.resets)})
    assert (policy_evaluate(policy, None, no_resets).values - traj.values).abs().max() > 1e-3


def test_trial_mode_keeps_state_within_a_trial_and_resets_between_trials():
    envs = make_envs()
    policy = make_policy(envs, in_context=True)
    traj = make_rollout(policy, envs, reset_state="trial", episodes_per_trial=2).collect(13)
    for b, (length, _) in enumerate(SPECS):
        trial_ends = (torch.arange(13) + 1) % (2 * length) == 0
        assert torch.equal(traj.trial_ends[:, b], trial_ends)
    assert torch.equal(traj.resets, shift(traj.trial_ends, True))
    mid_trial = traj.dones & ~traj.trial_ends
    assert mid_trial.any()
    ev = policy_evaluate(policy, None, traj)
    torch.testing.assert_close(ev.values, traj.values, atol=1e-5, rtol=1e-5)
    # resetting at every episode end instead would give different values
    per_episode = Trajectory(**{**traj.as_dict(), "resets": shift(traj.dones, True)})
    assert (policy_evaluate(policy, None, per_episode).values - traj.values).abs().max() > 1e-3


def test_in_context_inputs_are_the_previous_step_and_zero_at_trial_start():
    envs = make_envs()
    policy = make_policy(envs, in_context=True)
    traj = make_rollout(policy, envs, reset_state="trial", episodes_per_trial=2).collect(13)
    start = traj.resets  # trial starts (including step 0)
    assert torch.equal(traj.prev_actions, torch.where(start, 0, shift(traj.actions, 0)))
    assert torch.equal(traj.prev_rewards, torch.where(start, 0.0, shift(traj.rewards, 0.0)))
    assert torch.equal(traj.prev_dones, ~start & shift(traj.dones, False))
    assert traj.prev_dones.any()  # an episode ended mid-trial and the policy was told
    # per-episode mode: every episode is its own trial, so prev_done is never set
    per_ep = make_rollout(policy, make_envs(), reset_state="episode").collect(9)
    assert not per_ep.prev_dones.any()
    assert torch.equal(per_ep.prev_actions, torch.where(per_ep.resets, 0, shift(per_ep.actions, 0)))


def test_new_trial_resets_envs_state_and_context_and_sets_task_ids():
    envs = make_envs()
    policy = make_policy(envs, in_context=True)
    rollout = make_rollout(policy, envs, reset_state="trial")  # trials end only on request
    first = rollout.collect(5)
    assert not first.trial_ends.any() and not first.resets[1:].any()
    rollout.new_trial(seed=3, task_ids=[4, 5, 6, 7])
    second = rollout.collect(3)
    assert second.resets[0].all() and not second.resets[1:].any()
    assert not second.prev_dones[0].any() and second.prev_rewards[0].abs().max() == 0
    assert second.task_ids.tolist() == [4, 5, 6, 7]
    ev = policy_evaluate(policy, None, second)
    torch.testing.assert_close(ev.values, second.values, atol=1e-5, rtol=1e-5)


# -- truncation bootstrapping -------------------------------------------------------------------
class RecordInfos(gym.vector.VectorWrapper):
    def __init__(self, env):
        super().__init__(env)
        self.infos: list[dict] = []

    def step(self, actions):
        out = super().step(actions)
        self.infos.append(out[-1])
        return out


@pytest.mark.parametrize("in_context", [False, True])
def test_bootstrap_values_are_the_final_obs_value_under_the_pre_reset_state(in_context):
    envs = RecordInfos(make_envs())
    policy = make_policy(envs, kind="mamba", in_context=in_context)
    mode = "trial" if in_context else "episode"
    traj = make_rollout(policy, envs, reset_state=mode, episodes_per_trial=2).collect(11)
    truncated = traj.truncated & ~traj.terminated
    assert truncated.any() and traj.terminated.any()
    assert torch.equal(traj.bootstrap_values != 0, truncated)
    for t, b in truncated.nonzero().tolist():
        # the state after step t, from an independent sequence-mode pass over row b
        ctx = {}
        if in_context:
            ctx = dict(
                prev_action=traj.prev_actions[: t + 1, b][None],
                prev_reward=traj.prev_rewards[: t + 1, b][None],
                prev_done=traj.prev_dones[: t + 1, b][None],
            )
        with torch.no_grad():
            state0 = traj[b].initial_state
            _, state = policy(
                traj.obs[: t + 1, b][None], state0, traj.resets[: t + 1, b][None], **ctx
            )
            final_obs = torch.as_tensor(envs.infos[t]["final_obs"][b])[None]
            if in_context:
                ctx = dict(
                    prev_action=traj.actions[t, b][None],
                    prev_reward=traj.rewards[t, b][None],
                    prev_done=torch.zeros(1, dtype=torch.bool),
                )
            out, _ = policy.step(final_obs, state, **ctx)
        assert traj.bootstrap_values[t, b].item() == pytest.approx(out.value.item(), abs=1e-5)
        # and it is not the value of the next episode's first observation
        if t + 1 < traj.T:
            assert abs(traj.bootstrap_values[t, b] - traj.values[t + 1, b]) > 1e-4


# -- continuity, determinism, slicing -----------------------------------------------------------
def test_two_collects_continue_seamlessly_into_one():
    policy = make_policy(make_envs(), kind="mamba", in_context=True)
    kw = dict(reset_state="trial", episodes_per_trial=2)
    split = make_rollout(policy, make_envs(), **kw)
    a, b = split.collect(10), split.collect(10)
    whole = make_rollout(policy, make_envs(), **kw).collect(20)
    for name, x in whole.as_dict().items():
        if name in ("last_value", "start_returns", "task_ids", "initial_state"):
            continue
        torch.testing.assert_close(torch.cat([getattr(a, name), getattr(b, name)]), x)
    torch.testing.assert_close(b.last_value, whole.last_value)
    torch.testing.assert_close(a.last_value, b.values[0])
    assert a.episode_returns() + b.episode_returns() == pytest.approx(whole.episode_returns())
    # the carried state makes the second half reproducible on its own
    ev = policy_evaluate(policy, None, b)
    torch.testing.assert_close(ev.values, b.values, atol=1e-5, rtol=1e-5)


def test_collect_is_deterministic_under_seeds():
    policy = make_policy(make_envs())
    one = make_rollout(policy, make_envs(), seed=1).collect(8)
    two = make_rollout(policy, make_envs(), seed=1).collect(8)
    assert_trajs_equal(one, two)
    other = make_rollout(policy, make_envs(), seed=2).collect(8)
    assert not torch.equal(one.obs, other.obs)
    greedy = make_rollout(policy, make_envs(), seed=1).collect(8, deterministic=True)
    assert torch.equal(greedy.actions, greedy.dist_params.argmax(-1))


def test_trajectory_slices_whole_sequences_and_is_a_pytree():
    envs = make_envs()
    policy = make_policy(envs)
    traj = make_rollout(policy, envs).collect(9)
    part = traj[1:3]
    assert (part.T, part.B) == (9, 2)
    torch.testing.assert_close(part.obs, traj.obs[:, 1:3])
    torch.testing.assert_close(part.last_value, traj.last_value[1:3])
    assert traj[2].B == 1 and traj[torch.tensor([0, 3])].B == 2
    # a minibatch of sequences re-evaluates on its own (initial_state was sliced with it)
    ev = policy_evaluate(policy, None, traj[torch.tensor([3, 0])])
    torch.testing.assert_close(ev.values, traj.values[:, [3, 0]], atol=1e-5, rtol=1e-5)
    leaves, spec = pytree.tree_flatten(traj)
    assert_trajs_equal(pytree.tree_unflatten(leaves, spec), traj)
    assert traj.flatten_time()["rewards"].shape == (9 * 4,)


def test_policy_evaluate_is_differentiable_with_torch_func():
    envs = make_envs()
    policy = make_policy(envs, kind="mamba", in_context=True)
    traj = make_rollout(policy, envs, reset_state="trial", episodes_per_trial=2).collect(8)
    adv, _ = gae(
        traj.rewards,
        traj.values,
        traj.terminated,
        traj.truncated,
        traj.bootstrap_values,
        traj.last_value,
        0.99,
        0.95,
    )
    params = {k: v.detach() for k, v in policy.named_parameters()}

    def loss(p, trajectory):
        return vpg_loss(policy_evaluate(policy, p, trajectory).log_probs, adv)

    g = grad(loss)(params, traj)
    policy.zero_grad()
    loss(None, traj).backward()
    for name, p in policy.named_parameters():  # (the critic gets no VPG gradient: p.grad None)
        expected = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(g[name], expected, atol=1e-6, rtol=1e-5)
    assert sum(v.abs().sum() for v in g.values()) > 0
    out = policy_evaluate(policy, params, traj)
    ref, _ = functional_call(
        policy,
        params,
        (traj.obs.transpose(0, 1),),
        {
            "state": traj.initial_state,
            "resets": traj.resets.T,
            "prev_action": traj.prev_actions.T,
            "prev_reward": traj.prev_rewards.T,
            "prev_done": traj.prev_dones.T,
        },
    )
    torch.testing.assert_close(out.values, ref.value.T)
