"""Emergence statistics on hand-built role assignments and distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metarl.population.analysis import (
    episode_roles,
    js_divergence,
    max_role_information,
    role_consistency,
    role_counts,
    role_mutual_information,
    skill_usage,
    specialisation_index,
)


def test_perfect_division_of_labour_scores_one():
    counts = np.diag([10, 7, 4])  # agent i always takes role i
    assert specialisation_index(counts) == pytest.approx(1.0)
    assert role_mutual_information(counts) == pytest.approx(math.log(3))
    assert role_consistency(counts) == pytest.approx(1.0)


def test_everyone_in_the_same_role_is_consistent_but_not_divided():
    counts = np.array([[6, 0, 0], [9, 0, 0], [3, 0, 0]])
    assert specialisation_index(counts) == pytest.approx(0.0)
    assert role_consistency(counts) == pytest.approx(1.0)


def test_uniform_roles_score_zero_on_both():
    counts = np.full((3, 3), 5)
    assert specialisation_index(counts) == pytest.approx(0.0)
    assert role_consistency(counts) == pytest.approx(0.0)


def test_two_agents_sharing_a_role_score_the_hand_computed_value():
    # N = K = 3, roles (a, a, b): I = H(2/3, 1/3) = log 3 - (2/3) log 2, I_max = log 3
    counts = np.array([[0, 0, 32], [0, 0, 32], [32, 0, 0]])
    want = 1 - (2 / 3) * math.log(2) / math.log(3)
    assert specialisation_index(counts) == pytest.approx(want)
    assert want == pytest.approx(0.5794, abs=1e-4)


def test_the_index_reaches_one_when_agents_outnumber_roles():
    # 3 agents, 2 roles: the best split is 2 + 1, so I_max = H(2/3, 1/3) < log 2
    assert max_role_information(3, 2) == pytest.approx(-(2 / 3) * math.log(2 / 3) + math.log(3) / 3)
    assert specialisation_index(np.array([[5, 0], [4, 0], [0, 9]])) == pytest.approx(1.0)
    assert max_role_information(4, 2) == pytest.approx(math.log(2))
    assert max_role_information(2, 5) == pytest.approx(math.log(2))  # fewer agents than roles
    assert specialisation_index(np.array([[3, 0, 0, 0, 0], [0, 0, 0, 2, 0]])) == pytest.approx(1.0)


def test_the_index_is_the_normalised_entropy_difference():
    # agent 0 always role 0; agent 1 splits evenly between roles 1 and 2 (N' = 2, K = 3)
    counts = np.array([[4, 0, 0], [0, 2, 2]])
    h_role = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # p(k) = (1/2, 1/4, 1/4)
    h_given_agent = 0.5 * math.log(2)
    assert role_mutual_information(counts) == pytest.approx(h_role - h_given_agent)
    assert specialisation_index(counts) == pytest.approx((h_role - h_given_agent) / math.log(2))
    assert role_consistency(counts) == pytest.approx(1 - 0.5 * math.log(2) / math.log(3))


def test_agents_without_any_role_are_left_out_and_undefined_cases_are_nan():
    counts = np.array([[5, 0, 0], [0, 0, 0], [0, 3, 0]])
    assert specialisation_index(counts) == pytest.approx(1.0)  # N' = 2 distinct roles
    assert math.isnan(specialisation_index(np.array([[5, 0], [0, 0]])))  # one agent: no division
    assert role_consistency(np.array([[5, 0], [0, 0]])) == pytest.approx(1.0)
    for undefined in (np.zeros((2, 3)), np.ones((2, 1))):  # no roles taken; one role
        assert math.isnan(specialisation_index(undefined))
        assert math.isnan(role_consistency(undefined))


def test_episode_roles_take_the_most_filled_role_per_agent():
    # T=4 steps, B=1 episode, N=3 agents
    roles = np.array([[[0, -1, 2]], [[0, 1, 2]], [[1, 1, -1]], [[0, -1, -1]]])
    dominant = episode_roles(roles, n_roles=3)
    assert dominant.tolist() == [[0, 1, 2]]
    assert episode_roles(np.full((3, 1, 2), -1), 3).tolist() == [[-1, -1]]
    assert role_counts(np.array([[0, 1, -1], [0, 2, 2]]), 3).tolist() == [
        [2, 0, 0],
        [0, 1, 1],
        [0, 0, 1],
    ]


def test_js_divergence_is_zero_for_equal_and_log2_for_disjoint_distributions():
    p = torch.log(torch.tensor([0.5, 0.5, 1e-30]))
    q = torch.log(torch.tensor([1e-30, 1e-30, 1.0]))
    assert float(js_divergence(p, p)) == pytest.approx(0.0, abs=1e-7)
    assert float(js_divergence(p, q)) == pytest.approx(math.log(2), rel=1e-5)
    assert float(js_divergence(p, q)) == pytest.approx(float(js_divergence(q, p)))


def test_skill_usage_counts_only_decisions():
    actions = torch.tensor([[[0, 1]], [[0, 1]], [[1, 1]]])  # (T=3, B=1, N=2)
    decided = torch.tensor([[[True, True]], [[False, False]], [[True, False]]])
    assert skill_usage(actions, decided, 2).tolist() == [[1, 1], [0, 1]]


def test_role_information_weights_agents_equally():
    # two agents with distinct fixed roles, one of them seen far more often: still a full division
    assert specialisation_index(np.array([[100, 0], [0, 1]])) == pytest.approx(1.0)
    # half-overlapping role distributions: H(mean) - mean H = H(3/4, 1/4) - ½ log 2 (N = K = 2)
    counts = np.array([[2, 0], [1, 1]])
    want = (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) - 0.5 * math.log(2)) / math.log(2)
    assert specialisation_index(counts) == pytest.approx(want)
