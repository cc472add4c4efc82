"""Regularisers: EWC's penalty is 0 at the anchor with gradient 2λF(θ−θ*), online decay, the
Fisher against a per-step autograd loop (empirical) and an exact expectation (true), L2 and
fine-tuning, PackNet keeping earlier tasks' outputs bit-identical, state dicts, bad input."""

from __future__ import annotations

import io

import gymnasium as gym
import pytest
import torch
from torch.func import functional_call, grad

import ssm
from continual.fisher import fisher_diagonal
from continual.packnet import FREE, PackNet
from continual.regularizers import (
    EWC,
    ConsolidationContext,
    FineTuning,
    L2Anchor,
    RegularizerSet,
)
from metarl.objectives import policy_evaluate
from metarl.trajectory import Trajectory

OBS, ACT = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3)


def make_policy(seed: int = 0, kind: str = "gru", in_context: bool = True) -> ssm.SequencePolicy:
    torch.manual_seed(seed)
    return ssm.SequencePolicy(
        OBS, ACT, kind=kind, d_model=4, n_layers=1, in_context=in_context, encoder_hidden=8
    ).double()


def make_traj(policy: ssm.SequencePolicy, T: int = 5, B: int = 2, seed: int = 0) -> Trajectory:
    """A synthetic trajectory with consistent recorded outputs (actions drawn from the policy)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[0] = True
    resets[T // 2, 1] = True
    zeros = torch.zeros(T, B, dtype=torch.float64)
    prev_actions = torch.randint(0, 3, (T, B), generator=g)
    traj = Trajectory(
        obs=obs,
        actions=torch.randint(0, 3, (T, B), generator=g),
        rewards=zeros,
        terminated=resets.roll(-1, 0),
        truncated=torch.zeros(T, B, dtype=torch.bool),
        log_probs=zeros,
        values=zeros,
        dist_params=torch.zeros(T, B, 3, dtype=torch.float64),
        success=zeros,
        resets=resets,
        prev_actions=prev_actions,
        prev_rewards=torch.randn(T, B, generator=g, dtype=torch.float64),
        prev_dones=resets.clone(),
        trial_ends=resets.roll(-1, 0),
        bootstrap_values=zeros,
        last_value=torch.zeros(B, dtype=torch.float64),
        start_returns=torch.zeros(B, dtype=torch.float64),
        task_ids=torch.zeros(B, dtype=torch.int64),
        initial_state=policy.initial_state(B, dtype=torch.float64),
    )
    return traj


def params_of(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# -- EWC -----------------------------------------------------------------------------------------
def test_ewc_penalty_is_zero_at_the_anchor_and_its_gradient_is_2_lambda_F_delta():
    g = torch.Generator().manual_seed(0)
    anchor = {
        "w": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "b": torch.randn(4, generator=g, dtype=torch.float64),
    }
    fisher = {k: torch.rand(v.shape, generator=g, dtype=torch.float64) for k, v in anchor.items()}
    ewc = EWC(strength=2.5)
    ewc.consolidate_fisher(anchor, fisher)
    assert ewc.penalty(anchor).item() == 0.0
    theta = {
        k: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in anchor.items()
    }
    want = {k: 2 * 2.5 * fisher[k] * (theta[k] - anchor[k]) for k in theta}
    got = grad(ewc.penalty)(theta)  # torch.func
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    ewc.penalty(leaves).backward()  # autograd
    for k in theta:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(leaves[k].grad, want[k], rtol=1e-12, atol=1e-12)
    expected = 2.5 * sum((fisher[k] * (theta[k] - anchor[k]) ** 2).sum() for k in theta)
    assert ewc.penalty(theta).item() == pytest.approx(expected.item(), rel=1e-12)


def test_online_ewc_decays_old_fishers_and_moves_the_anchor():
    p1, p2 = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    f1, f2 = {"w": torch.tensor([1.0, 2.0, 3.0])}, {"w": torch.tensor([0.5, 0.0, 1.0])}
    ewc = EWC(strength=1.0, decay=0.5)
    ewc.consolidate_fisher(p1, f1)
    ewc.consolidate_fisher(p2, f2)
    torch.testing.assert_close(ewc.fisher["w"], 0.5 * f1["w"] + f2["w"])
    assert torch.equal(ewc.anchor["w"], p2["w"])
    assert ewc.num_consolidations == 2


def test_empirical_fisher_matches_a_per_step_autograd_loop():
    policy = make_policy()
    traj = make_traj(policy, T=5, B=2)
    fisher = fisher_diagonal(policy, [traj, traj[[1]]], chunk_size=3)
    want = {n: torch.zeros_like(p) for n, p in policy.named_parameters()}
    n_steps = 0
    for tr in (traj, traj[[1]]):
        for t in range(tr.T):
            for b in range(tr.B):
                policy.zero_grad()
                policy_evaluate(policy, None, tr).log_probs[t, b].backward()
                for n, p in policy.named_parameters():
                    if p.grad is not None:  # the critic gets none
                        want[n] += p.grad**2
                n_steps += 1
    for n in want:
        torch.testing.assert_close(fisher[n], want[n] / n_steps, rtol=1e-9, atol=1e-14)
    assert torch.all(fisher["value.weight"] == 0), "the critic does not enter log pi"
    assert sum(f.sum() for f in fisher.values()) > 0


def test_true_fisher_approaches_the_expectation_over_actions():
    policy = make_policy(seed=1)
    with torch.no_grad():  # a sharp policy, so that which action is scored matters
        for p in policy.head.parameters():
            p.mul_(50.0)
    traj = make_traj(policy, T=3, B=2, seed=1)
    exact = {n: torch.zeros_like(p) for n, p in policy.named_parameters()}
    for a in range(3):  # E_{a~π}[g_a²] = Σ_a π(a|h) g_a², per step
        forced = Trajectory(**{**traj.as_dict(), "actions": torch.full_like(traj.actions, a)})
        for t in range(traj.T):
            for b in range(traj.B):
                policy.zero_grad()
                lp = policy_evaluate(policy, None, forced).log_probs[t, b]
                lp.backward()
                for n, p in policy.named_parameters():
                    if p.grad is not None:
                        exact[n] += lp.exp().item() * p.grad**2
    want = torch.cat([e.flatten() for e in exact.values()]) / (traj.T * traj.B)

    def rel_err(fisher):
        got = torch.cat([f.flatten() for f in fisher.values()])
        return ((got - want).norm() / want.norm()).item()

    mc = fisher_diagonal(
        policy, traj, kind="true", samples=200, generator=torch.Generator().manual_seed(0)
    )
    assert rel_err(mc) < 0.1
    assert rel_err(fisher_diagonal(policy, traj)) > 0.2  # the taken (uniform) actions differ


def test_ewc_consolidate_computes_the_fisher_from_the_context():
    policy = make_policy()
    traj = make_traj(policy)
    ewc = EWC(strength=1.0, fisher="empirical")
    ewc.consolidate(dict(policy.named_parameters()), ConsolidationContext(policy, [traj]))
    want = fisher_diagonal(policy, traj)
    for n in want:
        torch.testing.assert_close(ewc.fisher[n], want[n])
    with pytest.raises(ValueError, match="needs a context with the policy and trajectories"):
        ewc.consolidate(dict(policy.named_parameters()))


# -- L2, fine-tuning, sets ----------------------------------------------------------------------
def test_l2_anchor_and_finetuning_and_sets():
    anchor = {"w": torch.tensor([1.0, -2.0])}
    l2 = L2Anchor(strength=3.0)
    assert l2.penalty(anchor).item() == 0.0  # nothing anchored yet
    l2.consolidate(anchor)
    theta = {"w": torch.tensor([2.0, 0.0])}
    assert l2.penalty(theta).item() == pytest.approx(3.0 * (1 + 4))
    torch.testing.assert_close(grad(l2.penalty)(theta)["w"], 2 * 3.0 * (theta["w"] - anchor["w"]))
    ft = FineTuning()
    assert ft.penalty(theta).item() == 0.0
    ewc = EWC(strength=1.0)
    ewc.consolidate_fisher(anchor, {"w": torch.tensor([1.0, 1.0])})
    both = RegularizerSet([ft, l2, ewc])
    assert both.penalty(theta).item() == pytest.approx(15.0 + 5.0)


def test_state_dicts_round_trip_through_weights_only_load():
    policy = make_policy()
    params = dict(policy.named_parameters())
    ewc = EWC(strength=0.7, decay=0.9, fisher="true")
    ewc.consolidate_fisher(params, {n: torch.rand_like(p) for n, p in params.items()})
    l2 = L2Anchor(1.5)
    l2.consolidate(params)
    pn = PackNet(params, prune_fraction=0.3)
    pn.consolidate(params)
    for reg, fresh in (
        (ewc, EWC(0.0)),
        (l2, L2Anchor(0.0)),
        (pn, PackNet(params)),
        (FineTuning(), FineTuning()),
    ):
        buf = io.BytesIO()
        torch.save(reg.state_dict(), buf)
        buf.seek(0)
        fresh.load_state_dict(torch.load(buf, weights_only=True))
        theta = {n: p.detach() + 0.1 for n, p in params.items()}
        assert fresh.penalty(theta).item() == reg.penalty(theta).item()
        assert fresh.state_dict().keys() == reg.state_dict().keys()
    assert pn.task == 1 and PackNet(params).task == 0
    with pytest.raises(ValueError, match="expected a 'ewc' regulariser state, got 'l2'"):
        EWC(1.0).load_state_dict(l2.state_dict())
    with pytest.raises(ValueError, match="schema_version 7 is not supported"):
        L2Anchor(1.0).load_state_dict({**l2.state_dict(), "schema_version": 7})


# -- PackNet -------------------------------------------------------------------------------------
def train_steps(policy, packnet, seed, steps=25):
    """A few AdamW steps (weight decay and momentum both try to move frozen weights)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    target = torch.randn(4, 6, generator=g, dtype=torch.float64)
    opt = torch.optim.AdamW(policy.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        out, _ = policy(
            obs,
            prev_action=torch.zeros(4, 6, dtype=torch.long),
            prev_reward=torch.zeros(4, 6, dtype=torch.float64),
            prev_done=torch.zeros(4, 6, dtype=torch.bool),
        )
        loss = ((out.value - target) ** 2).mean() + out.dist_params.pow(2).mean()
        loss.backward()
        packnet.mask_module_gradients(policy)
        opt.step()
        packnet.after_optimizer_step(dict(policy.named_parameters()))


def outputs(policy, params, obs):
    kw = {
        "prev_action": torch.zeros(obs.shape[:2], dtype=torch.long),
        "prev_reward": torch.zeros(obs.shape[:2], dtype=torch.float64),
        "prev_done": torch.zeros(obs.shape[:2], dtype=torch.bool),
    }
    out, _ = functional_call(policy, params, (obs,), kw)
    return out


def test_packnet_keeps_earlier_tasks_outputs_bit_identical():
    policy = make_policy(seed=3)
    params = dict(policy.named_parameters())
    pn = PackNet(params, prune_fraction=0.5)
    obs = torch.randn(3, 7, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    train_steps(policy, pn, seed=0)
    pn.prune(params)
    train_steps(policy, pn, seed=1, steps=5)  # the retrain phase
    pn.consolidate(params)
    task0 = outputs(policy, pn.masked_params(params, 0), obs)
    frozen0 = params_of(policy)

    for task in (1, 2):
        train_steps(policy, pn, seed=10 + task)
        pn.consolidate(params)
        now0 = outputs(policy, pn.masked_params(params, 0), obs)
        assert torch.equal(now0.dist_params, task0.dist_params)
        assert torch.equal(now0.value, task0.value)
        for n, p in params.items():  # task 0's weights, biases and norms untouched
            used = pn.owner[n] == 0
            assert torch.equal(p.detach()[used], frozen0[n][used])
        later = outputs(policy, pn.masked_params(params, task), obs)
        assert not torch.equal(later.value, task0.value), "the later task learned nothing"

    # ownership: disjoint, shares follow the prune fraction, biases belong to task 0
    w = pn.owner["in_proj.weight"]
    n = w.numel()
    assert (w == 0).sum() == round(0.5 * n)
    assert (w == 1).sum() == round(0.5 * (n - round(0.5 * n)))
    assert torch.all(pn.owner["in_proj.bias"] == 0)
    assert pn.free_fraction() == pytest.approx(
        sum(int((o == FREE).sum()) for k, o in pn.owner.items() if pn.prunable[k])
        / sum(o.numel() for k, o in pn.owner.items() if pn.prunable[k])
    )
    with pytest.raises(ValueError, match=r"task must be in \[0, 3\]"):
        pn.masked_params(params, 4)


def test_packnet_masks_gradients_of_frozen_weights():
    policy = make_policy()
    params = dict(policy.named_parameters())
    pn = PackNet(params, prune_fraction=0.25)
    pn.consolidate(params)  # task 0 takes 75% of each weight matrix and every bias
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    masked = pn.mask_gradients(grads)
    for n in params:
        assert torch.equal(masked[n] != 0, pn.owner[n] == FREE)
    assert torch.all(masked["in_proj.bias"] == 0)
    with pytest.raises(ValueError, match="already pruned"):
        pn.prune(params)
        pn.prune(params)


def test_bad_input_raises_value_errors():
    with pytest.raises(ValueError, match="strength must be a number >= 0"):
        EWC(strength=-1.0)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        EWC(strength=1.0, decay=1.5)
    with pytest.raises(ValueError, match="fisher must be one of"):
        EWC(strength=1.0, fisher="exact")
    ewc = EWC(strength=1.0)
    with pytest.raises(ValueError, match="does not match a parameter"):
        ewc.consolidate_fisher({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="finite and >= 0"):
        ewc.consolidate_fisher({"w": torch.zeros(2)}, {"w": torch.tensor([1.0, -1.0])})
    ewc.consolidate_fisher({"w": torch.zeros(2)}, {"w": torch.ones(2)})
    with pytest.raises(ValueError, match="anchor has an entry for 'w', which params lack"):
        ewc.penalty({"v": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"anchor\['w'\] has shape \(2,\), the parameter \(3,\)"):
        ewc.penalty({"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="params must be a dict"):
        ewc.penalty(torch.zeros(2))
    with pytest.raises(ValueError, match="prune_fraction must be in"):
        PackNet({"w": torch.zeros(2, 2)}, prune_fraction=2.0)
    pn = PackNet({"w": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="differ from the PackNet parameters"):
        pn.prune({"v": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="which PackNet does not know"):
        pn.mask_gradients({"v": torch.zeros(2, 2)})
    policy = make_policy()
    with pytest.raises(ValueError, match="kind must be one of"):
        fisher_diagonal(policy, make_traj(policy), kind="exact")
    with pytest.raises(ValueError, match="non-empty list"):
        fisher_diagonal(policy, [])
