"""Collecting with per-task parameters, the meta-training loop and adaptation evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from metarl.meta import (
    MAML,
    MetaConfig,
    TaskBatchedPolicy,
    adapt_eval,
    collect_tasks,
    make_learner,
    task_batches,
    train_meta,
)
from metarl.meta.batch import linear_baseline, stack_tasks, steps_in_episode
from metarl.meta.testing import tiny_policy


def test_task_batched_policy_steps_each_task_with_its_own_parameters():
    policy, family = tiny_policy("mamba", max_episode_steps=5)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    stacked = {
        k: torch.stack([v + 0.05 * i * torch.randn_like(v) for i in range(3)])
        for k, v in theta.items()
    }
    actor = TaskBatchedPolicy(policy, stacked, envs_per_task=2)
    obs = torch.randn(6, 2, dtype=torch.float64)
    state = actor.initial_state(6)
    out, new_state = actor.step(obs, state, torch.zeros(6, dtype=torch.bool))
    for i in range(3):
        p = {k: v[i] for k, v in stacked.items()}
        ref_out, _ = functional_call(policy, p, (obs[2 * i : 2 * i + 2][:, None],), {})
        torch.testing.assert_close(out.dist_params[2 * i : 2 * i + 2], ref_out.dist_params[:, 0])
        torch.testing.assert_close(out.value[2 * i : 2 * i + 2], ref_out.value[:, 0])
    looped = TaskBatchedPolicy(policy, stacked, envs_per_task=2, vectorize=False)
    out2, state2 = looped.step(obs, state, torch.zeros(6, dtype=torch.bool))
    torch.testing.assert_close(out2.dist_params, out.dist_params, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.utils._pytree.tree_leaves(state2), torch.utils._pytree.tree_leaves(new_state)
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="exactly 3 x 2 rows"):
        actor.step(obs[:4], None)
    with pytest.raises(ValueError, match="stacked over tasks"):
        TaskBatchedPolicy(policy, {k: v[0] for k, v in stacked.items()}, 2)


def test_collecting_with_theta_stacked_per_task_reproduces_the_plain_rollout():
    policy, family = tiny_policy("gru", max_episode_steps=4)
    tasks = family.sample(2, seed=5)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    stacked = {k: v.expand(2, *v.shape) for k, v in theta.items()}
    a = collect_tasks(
        policy, family, tasks, 3, 9, seed=1, generator=torch.Generator().manual_seed(0)
    )
    b = collect_tasks(
        policy,
        family,
        tasks,
        3,
        9,
        seed=1,
        params=stacked,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(a.task_ids, torch.tensor([0, 0, 0, 1, 1, 1]))
    torch.testing.assert_close(a.actions, b.actions)
    torch.testing.assert_close(a.rewards, b.rewards)
    torch.testing.assert_close(a.log_probs, b.log_probs)
    # episodes of 4 steps in 9: truncations at t = 3 and 7 bootstrap the same values
    assert a.truncated[3].all() and a.truncated[7].all()
    torch.testing.assert_close(a.bootstrap_values, b.bootstrap_values)
    assert (a.bootstrap_values[3] != 0).all()


def test_task_batches_split_by_task_and_fit_the_linear_baseline_per_task():
    policy, family = tiny_policy("gru", max_episode_steps=4)
    traj = collect_tasks(policy, family, family.sample(2, seed=0), 3, 8, seed=0)
    batch = task_batches(traj, 2, gamma=0.9, normalize=False)
    assert batch.traj.obs.shape == (2, 8, 3, 2) and batch.advantages.shape == (2, 8, 3)
    torch.testing.assert_close(batch.traj.rewards[1], traj.rewards[:, 3:])
    assert torch.equal(steps_in_episode(traj.resets)[:, 0], torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    # returns-to-go restart at every episode end (truncation is terminal for this baseline)
    torch.testing.assert_close(batch.returns[0, 3], batch.traj.rewards[0, 3])
    fitted = linear_baseline(stack_tasks(traj, 2), batch.returns)
    resid = (batch.returns - fitted).pow(2).mean()
    assert resid < batch.returns.var()  # it explains something
    norm = task_batches(traj, 2)
    assert norm.advantages[0].mean().abs() < 1e-9 and norm.advantages[1].std() == pytest.approx(1)


def small_config(**kw) -> MetaConfig:
    base = dict(
        meta_batch_size=2,
        episodes_per_task=2,
        iterations=2,
        inner_lr=0.1,
        outer_lr=1e-3,
        seed=3,
    )
    return MetaConfig(**(base | kw))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(algo="maml", first_order_iters=1, lr_mode="lslr"),
        dict(
            algo="maml",
            outer="trpo",
            baseline="critic",
            inner_objective="ppo",
            trpo_cg_steps=3,
            max_backtracks=4,
        ),
        dict(algo="fomaml", inner_steps=2, resample_support=True, multi_step_loss=True),
        dict(algo="imaml", inner_steps=2, outer_objective="ppo"),
        dict(algo="reptile", outer="sgd", inner_steps=2, vectorize=False),
    ],
    ids=["maml-lslr-annealed", "maml-trpo-critic", "fomaml-resample-msl", "imaml", "reptile"],
)
def test_train_meta_runs_every_learner_and_logs_finite_stats(overrides):
    policy, family = tiny_policy("gru", max_episode_steps=5)
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    rows = []
    cfg = small_config(**overrides)
    history = train_meta(policy, family, cfg, log=rows.append)
    assert rows == history and [r.iteration for r in history] == [1, 2]
    steps_per_iter = 5 * 2 * 2 * (1 + (cfg.inner_steps if cfg.resample_support else 1))
    assert history[-1].global_step == 2 * steps_per_iter
    for r in history:
        names = ["pre_return", "post_return", "grad_norm", "steps_per_second"]
        names += [] if cfg.algo == "reptile" else ["outer_loss"]  # Reptile has no query loss
        for name in names:
            assert math.isfinite(getattr(r, name)), name
        assert r.vectorized == cfg.vectorize
    moved = max(float((v.detach() - before[k]).abs().max()) for k, v in policy.named_parameters())
    assert moved > 0
    if cfg.first_order_iters:
        assert [r.first_order for r in history] == [True, False]  # derivative-order annealing
    if cfg.outer == "trpo":
        assert all(r.trpo_accepted is not None and r.kl <= cfg.max_kl for r in history)
        assert math.isfinite(history[0].value_loss)
    if cfg.algo == "maml" and cfg.outer == "adam":
        assert math.isfinite(history[0].kl) and history[0].kl > 0


def test_adapt_eval_reports_returns_before_and_after_each_step():
    policy, family = tiny_policy("gru", max_episode_steps=5)
    learner = make_learner(policy, small_config())
    tasks = family.sample(3, split="test", seed=0)
    out = adapt_eval(policy, family, learner, tasks, steps=2, episodes=2, seeds=(0, 1))
    assert out["returns"].shape == (2, 3, 3) and out["success"].shape == (2, 3, 3)
    assert list(out["steps"]) == [0, 1, 2]
    assert torch.isfinite(torch.as_tensor(out["returns"])).all()
    # adaptation changes behaviour: later returns differ from the pre-adaptation ones
    assert (out["returns"][:, :, 2] != out["returns"][:, :, 0]).any()
    # same seed, same numbers
    again = adapt_eval(policy, family, learner, tasks, steps=2, episodes=2, seeds=(0, 1))
    assert (again["returns"] == out["returns"]).all()
    with pytest.raises(ValueError, match="steps must be >= 0"):
        adapt_eval(policy, family, learner, tasks, steps=-1)


def test_meta_config_selects_every_learner_and_round_trips_through_load_config():
    from metarl.config import load_config
    from metarl.meta import IMAML, Reptile

    policy, _ = tiny_policy("gru", max_episode_steps=5)
    for algo, cls in (("maml", MAML), ("fomaml", MAML), ("imaml", IMAML), ("reptile", Reptile)):
        cfg = load_config(MetaConfig, {"algo": algo, "inner_steps": 2})
        learner = make_learner(policy, cfg)
        assert type(learner) is cls and learner.inner_steps == 2
        if cls is MAML:
            assert learner.first_order == (algo == "fomaml")
    assert load_config(MetaConfig, None, ["outer=trpo", "max_kl=0.05"]).max_kl == 0.05
