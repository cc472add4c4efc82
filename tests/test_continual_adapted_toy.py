"""R_pre / R_adapt and the adapted metrics on a toy checked by hand: the adapted evaluation is
replaced by a script of known scores, so every cell of the matrices and every derived number can
be written down in advance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_continual_learner import TINY, TINY_META

import continual.sequence as seq
from continual.config import SequenceConfig
from continual.sequence import adapted_forward_transfer, run_sequence
from metarl.config import load_config

# point p = 0 (before training) and p = i + 1 (the end of stage i); stage j = 0, 1
ADAPTED = [[0.1, 0.2], [0.9, 0.5], [0.6, 0.8]]
GAIN = 0.1  # pre = adapted - GAIN


def test_R_adapt_and_its_metrics_by_hand(monkeypatch):
    calls = []

    def scripted(built, learner, names, steps, episodes, seed, num_steps=None):
        p, j = divmod(len(calls), 2)
        calls.append((p, j, tuple(names), steps))
        return ADAPTED[p][j] - GAIN, ADAPTED[p][j]

    monkeypatch.setattr(seq, "adapted_scores", scripted)
    cfg = load_config(SequenceConfig, None, [*TINY, *TINY_META, "eval.every_iterations=100"])
    res = run_sequence(cfg, write=False).results
    assert len(calls) == 6  # 3 evaluation points x 2 stages, stage j's held-out entries each
    assert [c[:2] for c in calls] == [(p, j) for p in range(3) for j in range(2)]

    assert res["R_adapt"] == [[0.9, 0.5], [0.6, 0.8]]
    np.testing.assert_allclose(res["R_pre"], [[0.8, 0.4], [0.5, 0.7]])
    s = res["summary"]
    assert s["average_adapted_performance"] == pytest.approx((0.6 + 0.8) / 2)
    assert s["adapted_forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.8)) / 2)
    assert s["adapted_forgetting_per_stage"] == pytest.approx([0.3, 0.0])
    assert s["adaptation_gain"] == pytest.approx(GAIN)
    assert s["adapted_forward_transfer"] == pytest.approx(0.5 - 0.2)  # R[0, 1] - scratch b_1
    assert s["scratch_adapted_performance"] == pytest.approx((0.1 + 0.2) / 2)


def test_forward_transfer_of_adaptation_by_hand():
    R = [[0.9, 0.5, 0.4], [0.6, 0.8, 0.7], [0.5, 0.6, 0.9]]
    ft, per = adapted_forward_transfer(np.array(R), np.array([0.1, 0.2, 0.3]))
    assert per == pytest.approx([0.5 - 0.2, 0.7 - 0.3])
    assert ft == pytest.approx(0.35)
    assert np.isnan(adapted_forward_transfer(np.array([[1.0]]), np.array([0.0]))[0])
    with pytest.raises(ValueError, match="square"):
        adapted_forward_transfer(np.ones((2, 3)), np.zeros(2))


def test_the_adapted_evaluation_adapts_from_each_stage_s_own_parameters(monkeypatch):
    """PackNet under MAML: stage j is adapted from the parameters it is scored with (its masks),
    as in the greedy evaluation, and the live parameters are restored exactly afterwards."""
    from continual.sequence import SequenceRun, prepare_curriculum

    seen = []

    def recording(built, learner, names, steps, episodes, seed, num_steps=None):
        seen.append({k: v.detach().clone() for k, v in learner.policy.named_parameters()})
        return 0.0, 0.0

    monkeypatch.setattr(seq, "adapted_scores", recording)
    cfg = load_config(
        SequenceConfig,
        None,
        [
            *TINY,
            *TINY_META,
            "regularizer.kind=packnet",
            "replay.enabled=false",
            "eval.every_iterations=100",
        ],
    )
    run = SequenceRun(cfg, prepare_curriculum(cfg))
    run.run_in_memory()
    learner = run.learner
    live = {k: v.detach().clone() for k, v in learner.policy.named_parameters()}
    last_point = seen[-2:]  # the final evaluation: stage 0, then stage 1
    groups = learner.evaluation_groups(2)
    assert len(groups) == 2  # PackNet scores each stage with its own masks
    for group, (j,) in groups.items():
        want = learner.evaluation_params(group)
        for name, value in last_point[j].items():
            torch.testing.assert_close(value, want[name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(last_point[0][n], live[n]) for n in live)  # stage 0 was masked
    with run._live_params(learner.evaluation_params(next(iter(groups)))):
        pass
    for name, value in learner.policy.named_parameters():
        assert torch.equal(value, live[name]), name  # restored bit for bit
