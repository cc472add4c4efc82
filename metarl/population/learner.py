"""``MultiAgentLearner``: a population of actors trained with independent PPO or MAPPO.

One iteration collects ``B`` aligned episodes of ``T`` steps from a batched game, then runs PPO
over minibatches of whole episodes. The choices, all in :class:`PopulationConfig`:

- **IPPO vs MAPPO** (Yu et al., 2022). IPPO: each actor's own value head on its own
  observation history. MAPPO: a centralised critic on the joint observation (centralised training,
  decentralised execution: the actors still see only their own observations and messages).
- **Parameter sharing**: one network for all slots, told apart by a one-hot id; otherwise one
  network per slot, heterogeneous if the agent specs differ (Mamba, S4D, GRU, sizes).
- **Communication**: a differentiable message channel (:mod:`.networks`). In the PPO update the
  episode is re-run jointly, so a reader's loss sends gradients into the senders' parameters
  (mode "prev": step by step through time; mode "same": in parallel over time). ``detach`` cuts
  that path.
- **Options**: an option agent's head picks a library skill every ``k`` steps.
- **Self-play**: slots may play frozen snapshots (:mod:`.selfplay`), masked out of the loss.

Every loss is a masked mean over the entries that count (see :mod:`.batch`), so dead and absent
agents contribute nothing and a minibatch without any live entry adds no NaN.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import Tensor

from ssm.util import legacy_stream_seed

from ..objectives import explained_variance, gae, ppo_loss
from .batch import MultiAgentBatch
from .config import PopulationConfig
from .envs import MultiAgentEnv
from .networks import AgentNet, CentralCritic, joint_observation
from .selfplay import OpponentPool
from .skill_bridge import SkillBank, init_agent_from_skill, load_skills, skill_arch
from .skill_source import open_skill_source

__all__ = ["Carry", "MultiAgentLearner", "StepOutput"]


class Carry(NamedTuple):
    """What the joint step carries from one step to the next."""

    states: tuple
    """per network group, the recurrent state of its rows (R = B·|group|, b-major)"""
    messages: Tensor | None
    """(B, N, d_msg) the messages emitted at the previous step (mode "prev")"""
    msg_alive: Tensor
    """(B, N) bool: who emitted them (was alive)"""
    critic: tuple | None
    """the central critic's state"""


class StepOutput(NamedTuple):
    dists: list[Tensor]
    """per group, ``(B, |group|, A_g)`` log-probabilities"""
    values: Tensor
    """(B, N) value estimates"""


def _masked_mean_std(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    v = x[mask]
    if v.numel() < 2:
        return (v.mean() if v.numel() else x.new_zeros(())), x.new_ones(())
    return v.mean(), v.std()


def clipped_value_loss(
    new: Tensor, old: Tensor, returns: Tensor, clip_coef: float, clip: bool
) -> Tensor:
    """``½ mean(max((V - R)², (V_old + clip(V - V_old, ±ε) - R)²))`` as in :func:`ppo_loss`."""
    unclipped = (new - returns) ** 2
    if not clip:
        return 0.5 * unclipped.mean()
    clipped = old + torch.clamp(new - old, -clip_coef, clip_coef)
    return 0.5 * torch.max(unclipped, (clipped - returns) ** 2).mean()


class MultiAgentLearner:
    """A multi-agent learner for ``env`` (see the module docstring).

    Attributes: ``nets`` (one :class:`AgentNet` per group), ``groups`` (the slots of each
    group), ``critic`` (MAPPO), ``optimizer`` (one Adam param group per network), ``hparams``
    (``learning_rate``, ``ent_coef``: what PBT tunes), ``pool`` (self-play), ``skills``.
    """

    def __init__(self, cfg: PopulationConfig, env: MultiAgentEnv, seed: int):
        self.cfg, self.env, self.seed = cfg, env, seed
        n, d = env.n_agents, env.obs_dim
        self.n_agents, self.obs_dim, self.T = n, d, cfg.env.episode_len
        self.teams = torch.as_tensor(env.teams, dtype=torch.int64)
        self.id_dim = n if cfg.agent_ids else 0
        specs = [cfg.agents[i % len(cfg.agents)] for i in range(n)]
        if cfg.share_params:
            self.groups, net_specs = [list(range(n))], [specs[0]]
        else:
            self.groups, net_specs = [[i] for i in range(n)], specs
        self.group_of = [g for i in range(n) for g, s in enumerate(self.groups) if i in s]

        library = None
        if any(s.options or s.init_skill for s in net_specs):
            library = open_skill_source(cfg.skills.library, cfg.skills.source)
        self.skills: SkillBank | None = None
        if any(s.options for s in net_specs):
            self.skills = SkillBank(load_skills(library, cfg.skills.names), d, env.n_actions)
        self.option_groups = [bool(s.options) for s in net_specs]

        comm = cfg.comm
        d_msg = comm.d_msg if comm.enabled else 0
        self.init_report: list[dict[str, int] | None] = []
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            nets = []
            for spec in net_specs:
                skill = library.get(spec.init_skill) if spec.init_skill else None
                arch = (
                    skill_arch(skill)
                    if skill is not None
                    else {
                        "kind": spec.kind,
                        "d_model": spec.d_model,
                        "n_layers": spec.n_layers,
                        "encoder_hidden": spec.encoder_hidden,
                        "layer_kwargs": dict(spec.layer),
                    }
                )
                n_out = len(self.skills) if spec.options else env.n_actions
                net = AgentNet(d + self.id_dim, n_out, d_msg=d_msg, d_key=comm.d_key, **arch)
                self.init_report.append(init_agent_from_skill(net, skill) if skill else None)
                nets.append(net)
            self.nets = torch.nn.ModuleList(nets)
            self.critic: CentralCritic | None = None
            if cfg.algo == "mappo":
                c = cfg.critic
                self.critic = CentralCritic(
                    n * d + n, n, c.kind, c.d_model, c.n_layers, c.encoder_hidden, dict(c.layer)
                )
        self.hparams = {"learning_rate": cfg.ppo.learning_rate, "ent_coef": cfg.ppo.ent_coef}
        groups = [{"params": list(net.parameters())} for net in self.nets]
        if self.critic is not None:
            groups.append({"params": list(self.critic.parameters())})
        self.optimizer = torch.optim.Adam(groups, lr=cfg.ppo.learning_rate, eps=1e-5)
        self.generator = torch.Generator().manual_seed(seed)
        self.pool: OpponentPool | None = None
        if cfg.selfplay.enabled:
            self.pool = OpponentPool(self.teams, cfg.selfplay.pool_size, cfg.selfplay.p_latest)
        # who may read whom: never oneself; only teammates unless configured otherwise
        allowed = ~torch.eye(n, dtype=torch.bool)
        if comm.teammates_only:
            allowed &= self.teams[:, None] == self.teams[None, :]
        self.readable = allowed  # (N receivers, N senders)
        self.iteration = 0

    # -- helpers ------------------------------------------------------------------------------
    @property
    def comm_enabled(self) -> bool:
        return self.cfg.comm.enabled

    def _inputs(self, obs: Tensor, g: int) -> Tensor:
        """The observations of group ``g``'s slots, one-hot id appended: ``(..., S, D + id)``."""
        slots = self.groups[g]
        x = obs[..., slots, :]
        if self.id_dim:
            ids = F.one_hot(torch.tensor(slots), self.n_agents).to(x.dtype)
            x = torch.cat([x, ids.expand(*x.shape[:-1], self.n_agents)], dim=-1)
        return x

    def _mixed(self, g: int, rows: Tensor | None, fn):
        """``fn(network)`` for each parameter version that plays a row of group ``g``, combined row
        by row (``rows (R,)``: the version of each row; None: all current)."""
        if rows is None or self.pool is None or not bool((rows > 0).any()):
            return fn(self.nets[g])
        result = fn(self.nets[g])
        for v in torch.unique(rows[rows > 0]).tolist():
            out = fn(self.pool.net(v - 1, g))
            m = rows == v
            result = pytree.tree_map(
                lambda new, old, m=m: torch.where(m.view(-1, *[1] * (new.dim() - 1)), new, old),
                out,
                result,
            )
        return result

    def _rows(self, versions: Tensor | None, g: int) -> Tensor | None:
        return None if versions is None else versions[:, self.groups[g]].reshape(-1)

    def initial_carry(self, batch: int) -> Carry:
        states = tuple(net.initial_state(batch * len(s)) for net, s in zip(self.nets, self.groups))
        msgs = torch.zeros(batch, self.n_agents, self.cfg.comm.d_msg) if self.comm_enabled else None
        critic = self.critic.initial_state(batch) if self.critic is not None else None
        return Carry(states, msgs, torch.zeros(batch, self.n_agents, dtype=torch.bool), critic)

    # -- the joint step (acting, and the "prev" comm update) -----------------------------------
    def step(
        self, obs: Tensor, alive: Tensor, carry: Carry, versions: Tensor | None = None
    ) -> tuple[StepOutput, Carry]:
        """All agents one step: ``obs (B, N, D)``, ``alive (B, N)`` -> outputs and the new carry."""
        B = obs.shape[0]
        comm, mode = self.cfg.comm, self.cfg.comm.mode
        embeds = []
        for g in range(len(self.nets)):
            x = self._inputs(obs, g).reshape(-1, self.obs_dim + self.id_dim)  # (R, D')
            embeds.append(self._mixed(g, self._rows(versions, g), lambda net, x=x: net.embed(x)))
        if self.comm_enabled and mode == "same":
            messages = obs.new_zeros(B, self.n_agents, comm.d_msg)
            for g, slots in enumerate(self.groups):
                m = self._mixed(g, self._rows(versions, g), lambda net, g=g: net.message(embeds[g]))
                messages[:, slots] = m.reshape(B, len(slots), -1)
            speakers = alive
        else:
            messages, speakers = carry.messages, carry.msg_alive
        dists, new_states = [], []
        values = obs.new_zeros(B, self.n_agents)
        new_messages = obs.new_zeros(B, self.n_agents, comm.d_msg) if self.comm_enabled else None
        for g, slots in enumerate(self.groups):
            rows, e, S = self._rows(versions, g), embeds[g], len(slots)
            x = e
            if self.comm_enabled:
                heard = messages.detach() if comm.detach else messages
                mask = self.readable[slots][None] & speakers[:, None, :]  # (B, S, N)
                x = e + self._mixed(
                    g,
                    rows,
                    lambda net, e=e, S=S, heard=heard, mask=mask: net.read(
                        e.reshape(B, S, -1), heard, mask
                    ).reshape(B * S, -1),
                )
            f, state = self._mixed(g, rows, lambda net, x=x, g=g: net.core_step(x, carry.states[g]))
            out = self._mixed(g, rows, lambda net, f=f: net.heads(f))
            dists.append(out.dist_params.reshape(B, S, -1))
            values[:, slots] = out.value.reshape(B, S)
            new_states.append(state)
            if self.comm_enabled and mode == "prev":
                m = self._mixed(g, rows, lambda net, f=f: net.message(f))
                new_messages[:, slots] = m.reshape(B, S, -1)
        critic_state = None
        if self.critic is not None:
            values, critic_state = self.critic.step(joint_observation(obs, alive), carry.critic)
        if self.comm_enabled and mode == "same":
            new_messages = messages
        carry = Carry(tuple(new_states), new_messages, alive.clone(), critic_state)
        return StepOutput(dists, values), carry

    # -- re-evaluating whole episodes (the PPO update) -----------------------------------------
    def evaluate(self, obs: Tensor, alive: Tensor, versions: Tensor | None = None) -> StepOutput:
        """Re-run all agents over episodes ``obs (T, B, N, D)`` from a zero state; outputs
        ``dists[g] (T, B, |g|, A_g)`` and ``values (T, B, N)``, differentiable in the parameters.
        Matches what :meth:`step` produced while acting, to float precision."""
        if self.comm_enabled and self.cfg.comm.mode == "prev":
            return self._evaluate_stepwise(obs, alive, versions)
        return self._evaluate_parallel(obs, alive, versions)

    def _evaluate_stepwise(self, obs, alive, versions) -> StepOutput:
        carry = self.initial_carry(obs.shape[1])
        outs = []
        for t in range(obs.shape[0]):
            out, carry = self.step(obs[t], alive[t], carry, versions)
            outs.append(out)
        dists = [torch.stack([o.dists[g] for o in outs]) for g in range(len(self.nets))]
        return StepOutput(dists, torch.stack([o.values for o in outs]))

    def _evaluate_parallel(self, obs, alive, versions) -> StepOutput:
        T, B = obs.shape[:2]
        comm = self.cfg.comm
        embeds = []
        for g, slots in enumerate(self.groups):
            x = self._inputs(obs, g).permute(1, 2, 0, 3).reshape(B * len(slots), T, -1)  # (R,T,D')
            embeds.append(self._mixed(g, self._rows(versions, g), lambda net, x=x: net.embed(x)))
        if self.comm_enabled:  # mode "same": this step's messages, all steps at once
            messages = obs.new_zeros(B, self.n_agents, T, comm.d_msg)
            for g, slots in enumerate(self.groups):
                m = self._mixed(g, self._rows(versions, g), lambda net, g=g: net.message(embeds[g]))
                messages[:, slots] = m.reshape(B, len(slots), T, -1)
            messages = messages.permute(0, 2, 1, 3)  # (B, T, N, d_msg)
            heard = messages.detach() if comm.detach else messages
            speakers = alive.permute(1, 0, 2)  # (B, T, N)
        dists = []
        values = obs.new_zeros(T, B, self.n_agents)
        for g, slots in enumerate(self.groups):
            rows, e, S = self._rows(versions, g), embeds[g], len(slots)
            x = e
            if self.comm_enabled:
                mask = self.readable[slots][None, None] & speakers[:, :, None, :]  # (B,T,S,N)

                def context(net, e=e, S=S, mask=mask):
                    e4 = e.reshape(B, S, T, -1).permute(0, 2, 1, 3)  # (B, T, S, d)
                    c = net.read(e4, heard, mask)
                    return c.permute(0, 2, 1, 3).reshape(B * S, T, -1)

                x = e + self._mixed(g, rows, context)
            f = self._mixed(g, rows, lambda net, x=x: net.core_seq(x))
            out = self._mixed(g, rows, lambda net, f=f: net.heads(f))
            dists.append(out.dist_params.reshape(B, S, T, -1).permute(2, 0, 1, 3))
            values[:, :, slots] = out.value.reshape(B, S, T).permute(2, 0, 1)
        if self.critic is not None:
            joint = joint_observation(obs, alive).transpose(0, 1)  # (B, T, J)
            values = self.critic(joint).transpose(0, 1)
        return StepOutput(dists, values)

    # -- collecting episodes --------------------------------------------------------------------
    def _sample(self, dist: Tensor, deterministic: bool) -> Tensor:
        if deterministic:
            return dist.argmax(-1)
        flat = dist.reshape(-1, dist.shape[-1]).exp()
        return torch.multinomial(flat, 1, generator=self.generator).reshape(dist.shape[:-1])

    @torch.no_grad()
    def collect(
        self, seed: int, deterministic: bool = False, use_pool: bool = True
    ) -> MultiAgentBatch:
        """Play one episode in every env copy (``T`` steps) and record it."""
        env, T, N = self.env, self.T, self.n_agents
        obs_np, alive_np = env.reset(seed)
        B = env.num_envs
        versions = (
            self.pool.sample(B, self.generator)
            if (self.pool is not None and use_pool)
            else torch.zeros(B, N, dtype=torch.int64)
        )
        use_versions = versions if bool((versions > 0).any()) else None
        carry = self.initial_carry(B)
        k = self.cfg.skills.option_every
        option_slots = [i for i in range(N) if self.option_groups[self.group_of[i]]]
        skill_states = self.skills.initial_state(B * len(option_slots)) if option_slots else None
        choice = torch.zeros(B, N, dtype=torch.int64)
        steps: list[dict[str, Tensor]] = []
        for t in range(T):
            obs = torch.from_numpy(obs_np)
            alive = torch.from_numpy(alive_np)
            out, new_carry = self.step(obs, alive, carry, use_versions)
            decide_now = t % k == 0
            actions = torch.zeros(B, N, dtype=torch.int64)
            log_probs = torch.zeros(B, N)
            decided = torch.ones(B, N, dtype=torch.bool)
            for g, slots in enumerate(self.groups):
                dist = out.dists[g]  # (B, S, A_g)
                a = self._sample(dist, deterministic)
                if self.option_groups[g]:
                    if decide_now:
                        choice[:, slots] = a
                    a = choice[:, slots]
                    decided[:, slots] = decide_now
                actions[:, slots] = a
                log_probs[:, slots] = torch.gather(dist, -1, a[..., None]).squeeze(-1)
            env_actions = actions.clone()
            if option_slots:
                reset = torch.full((B * len(option_slots),), decide_now)
                prim, skill_states = self.skills.act(
                    obs[:, option_slots].reshape(-1, self.obs_dim),
                    skill_states,
                    reset,
                    choice[:, option_slots].reshape(-1),
                )
                env_actions[:, option_slots] = prim.reshape(B, len(option_slots))
            res = env.step(env_actions.numpy())
            terminated = torch.from_numpy(res.terminated) & alive
            truncated = torch.from_numpy(res.truncated) & alive & ~terminated
            alive_next = torch.from_numpy(res.alive)
            if t == T - 1:  # our episode length ends every episode still running
                truncated |= alive & ~terminated
            bootstrap = torch.zeros(B, N)
            if truncated.any():
                final = torch.from_numpy(res.obs)
                peek, _ = self.step(final, truncated, new_carry, use_versions)
                bootstrap = torch.where(truncated, peek.values, bootstrap)
            steps.append(
                {
                    "obs": obs,
                    "alive": alive,
                    "actions": actions,
                    "env_actions": env_actions,
                    "rewards": torch.from_numpy(res.rewards) * alive,
                    "terminated": terminated,
                    "truncated": truncated,
                    "log_probs": log_probs * alive,
                    "values": out.values * alive,
                    "bootstrap_values": bootstrap,
                    "decided": decided & alive,
                    "roles": torch.from_numpy(env.roles()).masked_fill(~alive, -1),
                }
            )
            obs_np, alive_np, carry = res.obs * res.alive[..., None], res.alive, new_carry
            if not alive_next.any():  # every episode is over: pad the rest
                for _ in range(t + 1, T):
                    steps.append({k_: torch.zeros_like(v) for k_, v in steps[-1].items()})
                    steps[-1]["roles"].fill_(-1)
                break
        return MultiAgentBatch.stack(steps, trainable=versions == 0, versions=versions)

    # -- the PPO update -------------------------------------------------------------------------
    def advantages(self, batch: MultiAgentBatch) -> tuple[Tensor, Tensor]:
        """GAE per slot; ``(advantages, returns)`` both ``(T, B, N)``."""
        T, B, N = batch.T, batch.B, batch.N
        term, trunc = batch.terminated, batch.truncated
        if not self.cfg.ppo.bootstrap_truncation:
            term, trunc = term | trunc, torch.zeros_like(trunc)
        flat = lambda x: x.reshape(T, B * N)  # noqa: E731
        adv, ret = gae(
            flat(batch.rewards),
            flat(batch.values),
            flat(term),
            flat(trunc),
            flat(batch.bootstrap_values),
            torch.zeros(B * N),
            self.cfg.ppo.gamma,
            self.cfg.ppo.gae_lambda,
        )
        return adv.reshape(T, B, N), ret.reshape(T, B, N)

    def loss(
        self, batch: MultiAgentBatch, adv: Tensor, ret: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The masked PPO loss of ``batch`` (advantages already normalised) and its statistics."""
        p = self.cfg.ppo
        ev = self.evaluate(batch.obs, batch.alive, batch.versions)
        pmask, vmask = batch.to_policy_mask(), batch.to_value_mask()
        total = ev.values.new_zeros(())
        stats: dict[str, list[Tensor]] = {}
        for g, slots in enumerate(self.groups):
            dist, pm = ev.dists[g], pmask[:, :, slots]
            a = batch.actions[:, :, slots]
            lp = torch.gather(dist, -1, a[..., None]).squeeze(-1)
            ent = -(dist.exp() * dist).sum(-1)
            if pm.any():
                unused = lp[pm].detach()  # ppo_loss's value terms (vf_coef=0): fitted below
                pl, st = ppo_loss(
                    lp[pm],
                    batch.log_probs[:, :, slots][pm],
                    adv[:, :, slots][pm],
                    unused,
                    unused,
                    unused,
                    ent[pm],
                    clip_coef=p.clip_coef,
                    vf_coef=0.0,
                    ent_coef=self.hparams["ent_coef"],
                )
                total = total + pl
                for name in ("policy_loss", "entropy", "approx_kl", "clip_fraction"):
                    stats.setdefault(name, []).append(st[name])
            if self.critic is None:  # IPPO: each network's own value head
                vm = vmask[:, :, slots]
                if vm.any():
                    vl = clipped_value_loss(
                        ev.values[:, :, slots][vm],
                        batch.values[:, :, slots][vm],
                        ret[:, :, slots][vm],
                        p.clip_coef,
                        p.clip_vloss,
                    )
                    total = total + p.vf_coef * vl
                    stats.setdefault("value_loss", []).append(vl.detach())
        if self.critic is not None and vmask.any():
            vl = clipped_value_loss(
                ev.values[vmask], batch.values[vmask], ret[vmask], p.clip_coef, p.clip_vloss
            )
            total = total + p.vf_coef * vl
            stats.setdefault("value_loss", []).append(vl.detach())
        return total, {k: torch.stack(v).mean() for k, v in stats.items()}

    def update(self, batch: MultiAgentBatch) -> dict[str, float]:
        """``update_epochs`` passes of PPO over minibatches of whole episodes."""
        p = self.cfg.ppo
        for group in self.optimizer.param_groups:
            group["lr"] = self.hparams["learning_rate"]
        with torch.no_grad():
            adv, ret = self.advantages(batch)
            if p.norm_adv:  # per network, over the entries its policy loss counts
                pmask = batch.to_policy_mask()
                for slots in self.groups:
                    mean, std = _masked_mean_std(adv[:, :, slots], pmask[:, :, slots])
                    adv[:, :, slots] = (adv[:, :, slots] - mean) / (std + 1e-8)
        B = batch.B
        per_mb = B // p.num_minibatches
        stats: dict[str, float] = {}
        modules = [*self.nets, *([self.critic] if self.critic is not None else [])]
        for _ in range(p.update_epochs):
            order = torch.randperm(B, generator=self.generator)
            for m in range(p.num_minibatches):
                idx = order[m * per_mb : (m + 1) * per_mb]
                loss, st = self.loss(batch.select(idx), adv[:, idx], ret[:, idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"population PPO: the loss is {loss.item()}")
                self.optimizer.zero_grad()
                if loss.requires_grad:
                    loss.backward()
                for module in modules:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), p.max_grad_norm)
                self.optimizer.step()
                stats = {k: float(v) for k, v in st.items()}
        vmask = batch.to_value_mask()
        if vmask.sum() > 1:
            stats["explained_variance"] = float(explained_variance(batch.values[vmask], ret[vmask]))
        return stats

    # -- one iteration ---------------------------------------------------------------------------
    def episode_stats(self, batch: MultiAgentBatch) -> dict[str, float]:
        """Returns per team and per slot (mean over the episodes a slot took part in)."""
        returns, present = batch.episode_returns(), batch.present()
        out: dict[str, float] = {}
        team_means = []
        for team in range(int(self.teams.max()) + 1):
            slots = (self.teams == team).nonzero().flatten()
            r, p = returns[:, slots], present[:, slots]
            per_episode = (r * p).sum(1) / p.sum(1).clamp(min=1)  # team mean per episode
            team_means.append(float(per_episode[p.any(1)].mean()) if p.any() else math.nan)
        out["episodic_return"] = team_means[0]
        if len(team_means) > 1:
            for team, v in enumerate(team_means):
                out[f"return/team{team}"] = v
        for i in range(self.n_agents):
            p = present[:, i]
            out[f"return/agent{i}"] = float(returns[p, i].mean()) if p.any() else math.nan
        out["alive_fraction"] = float(batch.alive.float().mean())
        return out

    def train_iteration(self, seed: int) -> tuple[dict[str, float], MultiAgentBatch]:
        """Collect, update, snapshot; returns the iteration's statistics and its batch."""
        start = time.perf_counter()
        batch = self.collect(seed)
        row = self.episode_stats(batch)
        row.update(self.update(batch))
        self.iteration += 1
        sp = self.cfg.selfplay
        if self.pool is not None and self.iteration % sp.snapshot_every == 0:
            self.pool.add(list(self.nets), self.iteration)
        row["learning_rate"] = self.hparams["learning_rate"]
        row["ent_coef"] = self.hparams["ent_coef"]
        steps = int(batch.alive.any(-1).sum())  # env steps in which someone acted
        row["steps_per_second"] = steps / max(time.perf_counter() - start, 1e-9)
        if self.pool is not None:
            row["selfplay/pool_size"] = len(self.pool)
            row["selfplay/snapshot_episodes"] = float((batch.versions > 0).any(1).float().mean())
        return row, batch

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Parameters, optimiser moments, hyperparameters, the pool, the generator, the counter
        (tensors and plain scalars only: a weights-only checkpoint)."""
        return {
            "nets": [net.state_dict() for net in self.nets],
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "hparams": dict(self.hparams),
            "pool": self.pool.state_dict() if self.pool is not None else None,
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any], learning_state: bool = True) -> None:
        """Load ``state``; with ``learning_state=False`` only what PBT's exploit copies
        (parameters, optimiser, hyperparameters, pool), not the generator and counter."""
        state = copy.deepcopy(state)  # nothing of the source stays aliased
        for net, sd in zip(self.nets, state["nets"]):
            net.load_state_dict(sd)
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.hparams = {k: float(v) for k, v in state["hparams"].items()}
        if self.pool is not None and state.get("pool") is not None:
            self.pool.load_state_dict(state["pool"], list(self.nets))
        if learning_state:
            self.generator.set_state(state["generator"])
            self.iteration = int(state["iteration"])


def seeds_for(seed: int, iteration: int, num_envs: int) -> int:
    """The env seed of an iteration: distinct for every (run seed, iteration, copy)."""
    return legacy_stream_seed(seed, iteration * max(num_envs, 1)) % 2**31
