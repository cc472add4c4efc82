"""The population learner: CTDE, differentiable messages, masks, self-play, PBT, skills."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from metarl.config import load_config
from metarl.population import (
    PBT,
    MultiAgentLearner,
    PopulationConfig,
    RoleGathering,
    exploit,
)

B, T = 4, 6


def learner(*overrides: str, env_kwargs: dict | None = None, teams=None, seed: int = 0):
    cfg = load_config(
        PopulationConfig,
        {"env": {"num_envs": B, "episode_len": T, "kwargs": env_kwargs or {}}},
        ["agents=[{d_model: 8, encoder_hidden: 16}]", "critic.d_model=8", *overrides],
    )
    env = RoleGathering(B, max_steps=T, **(env_kwargs or {}))
    if teams is not None:
        env.teams = np.asarray(teams)
    return MultiAgentLearner(cfg, env, seed=seed)


def gathered_log_probs(learner, ev, actions):
    out = torch.zeros(actions.shape)
    for g, slots in enumerate(learner.groups):
        lp = torch.gather(ev.dists[g], -1, actions[:, :, slots, None]).squeeze(-1)
        out[:, :, slots] = lp
    return out


CONFIGS = {
    "mappo": (),
    "ippo": ("algo=ippo",),
    "shared-ids": ("share_params=true",),
    "comm-prev": ("comm.enabled=true",),
    "comm-same": ("comm.enabled=true", "comm.mode=same"),
    "comm-shared-deaths": ("comm.enabled=true", "share_params=true"),
    "heterogeneous": (
        "agents=[{kind: mamba, d_model: 8, layer: {d_state: 4}}, "
        "{kind: s4d, d_model: 12, layer: {d_state: 4}}, {kind: gru, d_model: 16}]",
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reevaluation_reproduces_what_the_agents_did_while_acting(name):
    kw = {"death_rate": 0.2, "min_agents": 2} if "deaths" in name else None
    lrn = learner(*CONFIGS[name], env_kwargs=kw)
    batch = lrn.collect(seed=3)
    with torch.no_grad():
        ev = lrn.evaluate(batch.obs, batch.alive, batch.versions)
    mask = batch.alive
    lp = gathered_log_probs(lrn, ev, batch.actions)
    torch.testing.assert_close(lp[mask], batch.log_probs[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(ev.values[mask], batch.values[mask], atol=1e-5, rtol=0)


def perturbed_other_agent(lrn):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(T, B, 3, lrn.obs_dim, generator=g)
    alive = torch.ones(T, B, 3, dtype=torch.bool)
    other = obs.clone()
    other[:, :, 1] += 1.0  # only agent 1 sees something else
    with torch.no_grad():
        return lrn.evaluate(obs, alive), lrn.evaluate(other, alive)


@pytest.mark.parametrize("share", [False, True])
def test_centralised_critic_sees_joint_state_while_actors_see_only_their_own(share):
    lrn = learner(f"share_params={str(share).lower()}")
    a, b = perturbed_other_agent(lrn)
    dist = (lambda ev, i: ev.dists[0][:, :, i]) if share else (lambda ev, i: ev.dists[i][:, :, 0])
    torch.testing.assert_close(dist(a, 0), dist(b, 0), atol=0, rtol=0)  # agent 0's actor
    torch.testing.assert_close(dist(a, 2), dist(b, 2), atol=0, rtol=0)
    assert not torch.allclose(dist(a, 1), dist(b, 1))  # agent 1's own actor does react
    assert (a.values[..., 0] - b.values[..., 0]).abs().min() > 0  # the critic of agent 0 reacts


def test_ippo_values_are_the_actors_own_and_blind_to_other_agents():
    a, b = perturbed_other_agent(learner("algo=ippo"))
    torch.testing.assert_close(a.values[..., 0], b.values[..., 0], atol=0, rtol=0)
    assert not torch.allclose(a.values[..., 1], b.values[..., 1])


def test_with_communication_an_actor_hears_the_others():
    a, b = perturbed_other_agent(learner("comm.enabled=true"))
    assert not torch.allclose(a.dists[0][1:], b.dists[0][1:])  # agent 0 hears agent 1 (t >= 1)


def message_grads(*overrides):
    lrn = learner("comm.enabled=true", *overrides)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(T, B, 3, lrn.obs_dim, generator=g)
    ev = lrn.evaluate(obs, torch.ones(T, B, 3, dtype=torch.bool))
    ev.dists[0][:, :, 0, 0].sum().backward()  # a loss of agent 0 only
    return lrn


@pytest.mark.parametrize("mode", ["prev", "same"])
def test_messages_carry_gradients_from_reader_to_sender(mode):
    lrn = message_grads(f"comm.mode={mode}")
    sender = lrn.nets[1]
    assert sender.msg.weight.grad is not None and sender.msg.weight.grad.abs().sum() > 0
    assert sender.body.encoder.net[0].weight.grad.abs().sum() > 0  # and on into its encoder


@pytest.mark.parametrize("mode", ["prev", "same"])
def test_detached_messages_carry_no_gradient(mode):
    lrn = message_grads(f"comm.mode={mode}", "comm.detach=true")
    for sender in lrn.nets[1:]:
        for p in sender.parameters():
            assert p.grad is None or p.grad.abs().sum() == 0
    assert lrn.nets[0].query.weight.grad.abs().sum() > 0  # the reader still learns to read


def test_disabled_channel_has_no_message_path():
    lrn = learner("comm.enabled=false")
    assert not hasattr(lrn.nets[0], "msg")
    ev = lrn.evaluate(torch.randn(T, B, 3, lrn.obs_dim), torch.ones(T, B, 3, dtype=torch.bool))
    ev.dists[0].sum().backward()
    assert all(p.grad is None for net in lrn.nets[1:] for p in net.parameters())


def test_dead_and_absent_agents_are_masked_everywhere():
    lrn = learner("comm.enabled=true", env_kwargs={"death_rate": 0.3, "min_agents": 1})
    batch = lrn.collect(seed=5)
    assert (~batch.alive).any() and batch.alive.any()
    adv, ret = lrn.advantages(batch)
    assert torch.isfinite(adv).all() and (adv[~batch.alive] == 0).all()
    loss, stats = lrn.loss(batch, adv, ret)
    # whatever sits in the masked entries changes nothing: critic input, messages, losses
    junk = batch.select(torch.arange(B))
    dead = ~junk.alive
    junk.obs[dead] = 1e3 * torch.randn(int(dead.sum()), lrn.obs_dim)
    junk.actions[dead] = 4
    junk.log_probs[dead] = -1e3
    loss2, _ = lrn.loss(junk, adv, ret)
    assert torch.isfinite(loss) and all(np.isfinite(float(v)) for v in stats.values())
    torch.testing.assert_close(loss, loss2)


def test_a_slot_absent_from_every_episode_gives_no_nan():
    lrn = learner("algo=ippo")
    batch = lrn.collect(seed=0)
    batch.alive[:, :, 2] = False  # agent 2 never plays in this batch
    stats = lrn.update(batch)
    assert all(np.isfinite(v) for v in stats.values())
    for p in lrn.nets[2].parameters():
        assert torch.isfinite(p).all()


def test_training_iterations_with_deaths_stay_finite():
    lrn = learner(
        "comm.enabled=true", "comm.mode=same", env_kwargs={"death_rate": 0.2, "min_agents": 1}
    )
    for it in range(2):
        row, _ = lrn.train_iteration(seed=it)
        assert all(np.isfinite(v) for k, v in row.items() if not k.startswith("return/agent"))


def test_pbt_exploit_copies_weights_optimiser_and_hyperparameters_exactly():
    src, dst = learner(seed=1), learner(seed=2)
    src.train_iteration(seed=0)
    src.hparams = {"learning_rate": 3e-4, "ent_coef": 0.02}
    exploit(src, dst)
    for a, b in zip(src.nets.parameters(), dst.nets.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(src.critic.parameters(), dst.critic.parameters()):
        assert torch.equal(a, b)
    s_opt, d_opt = src.optimizer.state_dict(), dst.optimizer.state_dict()
    assert s_opt["state"].keys() == d_opt["state"].keys() and s_opt["state"]
    for k, st in s_opt["state"].items():
        for name, v in st.items():
            assert torch.equal(v, d_opt["state"][k][name]), name
    assert dst.hparams == src.hparams
    # no aliasing: the copy trains on from the same point exactly like the source
    batch = src.collect(seed=9)
    dst.generator.set_state(src.generator.get_state())
    src.update(batch)
    dst.update(batch)
    for a, b in zip(src.nets.parameters(), dst.nets.parameters()):
        assert torch.equal(a, b)
    with torch.no_grad():
        next(iter(src.nets.parameters())).add_(1.0)
    assert not torch.equal(next(iter(src.nets.parameters())), next(iter(dst.nets.parameters())))


def test_pbt_step_moves_the_worst_member_to_a_perturbed_copy_of_the_best():
    cfg = load_config(PopulationConfig, None, ["pbt.members=4", "pbt.fraction=0.25"]).pbt
    members = [learner(seed=s) for s in range(4)]
    for m, lr in zip(members, [1e-3, 2e-3, 3e-3, 4e-3]):
        m.hparams["learning_rate"] = lr
    events = PBT(cfg, seed=0).step(members, fitness=[0.1, 0.9, 0.5, 0.3])
    assert [(e["target"], e["source"]) for e in events] == [(0, 1)]
    ratio = members[0].hparams["learning_rate"] / 2e-3
    assert min(abs(ratio - f) for f in cfg.perturb) < 1e-9
    for a, b in zip(members[0].nets.parameters(), members[1].nets.parameters()):
        assert torch.equal(a, b)


def test_selfplay_snapshots_play_and_are_masked_out_of_training():
    lrn = learner("selfplay.enabled=true", "selfplay.p_latest=0.0", teams=[0, 0, 1])
    lrn.pool.add(list(lrn.nets), iteration=0)
    with torch.no_grad():  # the current parameters move away from the snapshot
        for p in lrn.nets.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = lrn.collect(seed=1)
    assert (batch.versions > 0).any(1).all()  # every episode has a snapshot side
    assert torch.equal(batch.trainable, batch.versions == 0)
    for b in range(B):  # a whole team plays the snapshot
        played = batch.versions[b] > 0
        assert played.tolist() in ([True, True, False], [False, False, True])
    with torch.no_grad():
        ev = lrn.evaluate(batch.obs, batch.alive, batch.versions)
        current = lrn.evaluate(batch.obs, batch.alive)
    lp = gathered_log_probs(lrn, ev, batch.actions)
    torch.testing.assert_close(lp, batch.log_probs, atol=1e-5, rtol=0)
    snap = batch.versions[None].expand(T, -1, -1) > 0
    assert not torch.allclose(gathered_log_probs(lrn, current, batch.actions)[snap], lp[snap])
    assert batch.to_policy_mask()[snap].sum() == 0


# -- library skills --------------------------------------------------------------------------


@pytest.fixture
def library(tmp_path):
    from skills import SkillLibrary
    from skills.extract import skill_from_policy
    from ssm import SequencePolicy

    lib = SkillLibrary.create(tmp_path / "lib")
    obs_dim = RoleGathering(1).obs_dim
    space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    for k in range(2):
        torch.manual_seed(k)
        policy = SequencePolicy(space, gym.spaces.Discrete(5), "gru", 8, 1, encoder_hidden=16)
        skill_from_policy(lib, f"skill{k}", policy, embedding=np.array([1.0, k + 1.0]))
    return str(lib.path)


def test_option_agents_choose_a_skill_every_k_steps(library):
    lrn = learner(
        f"skills.library={library}",
        "skills.option_every=2",
        "agents=[{d_model: 8, encoder_hidden: 16, options: true}, {d_model: 8}]",
    )
    batch = lrn.collect(seed=0)
    option_slots = [0, 2]
    decided = batch.decided[:, :, option_slots]
    assert decided[0::2].all() and not decided[1::2].any()
    assert batch.decided[:, :, 1].all()
    held = batch.actions[:, :, option_slots]
    assert torch.equal(held[1::2], held[0::2])  # the choice is held between decisions
    assert lrn.nets[0].n_actions == 2  # the head chooses among the two skills
    # the primitive actions are the chosen skill's greedy actions
    for t0 in (0, 2):  # each chosen skill starts afresh at its decision step
        skill = lrn.skills.skills[int(batch.actions[t0, 0, 0])]
        with torch.no_grad():
            out, _ = skill.network(batch.obs[None, t0 : t0 + 2, 0, 0])  # episode 0, slot 0
        assert torch.equal(batch.env_actions[t0 : t0 + 2, 0, 0], skill.network.mode(out)[0])
    stats = lrn.update(batch)
    assert np.isfinite(stats["policy_loss"])


def test_init_from_skill_makes_the_agent_act_like_the_skill(library):
    lrn = learner(f"skills.library={library}", "agents=[{init_skill: skill1}]")
    from skills import SkillLibrary

    skill = SkillLibrary.open(library).get("skill1")
    assert lrn.init_report[0]["widened"] == 1  # the id columns were appended
    assert lrn.nets[0].d_model == skill.spec.d_model  # the agent took the skill's architecture
    obs = torch.randn(2, T, lrn.obs_dim)
    ids = torch.zeros(2, T, 3)
    ids[..., 0] = 1.0
    net = lrn.nets[0]
    with torch.no_grad():
        mine = net.heads(net.core_seq(net.embed(torch.cat([obs, ids], -1)))).dist_params
        theirs, _ = skill.network(obs)
    torch.testing.assert_close(mine, theirs.dist_params, atol=1e-6, rtol=0)
