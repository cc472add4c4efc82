"""Emergence statistics on hand-built role assignments and distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metarl.population.analysis import (
    episode_roles,
    js_divergence,
    role_counts,
    role_mutual_information,
    skill_usage,
    specialisation_index,
)


def test_distinct_fixed_roles_are_fully_specialised_and_informative():
    counts = np.diag([10, 7, 4])  # agent i always takes role i
    assert specialisation_index(counts) == pytest.approx(1.0)
    assert role_mutual_information(counts) == pytest.approx(1.0)


def test_uniform_roles_are_unspecialised():
    counts = np.full((3, 3), 5)
    assert specialisation_index(counts) == pytest.approx(0.0)
    assert role_mutual_information(counts) == pytest.approx(0.0)


def test_everyone_in_the_same_role_is_specialised_but_not_differentiated():
    counts = np.array([[6, 0, 0], [9, 0, 0], [3, 0, 0]])
    assert specialisation_index(counts) == pytest.approx(1.0)
    assert role_mutual_information(counts) == pytest.approx(0.0)


def test_partial_specialisation_has_the_entropy_value():
    # agent 0 always role 0; agent 1 splits evenly between roles 1 and 2 (H = log 2)
    counts = np.array([[4, 0, 0], [0, 2, 2]])
    assert specialisation_index(counts) == pytest.approx(1 - 0.5 * math.log(2) / math.log(3))


def test_agents_without_any_role_are_left_out_and_undefined_cases_are_nan():
    counts = np.array([[5, 0], [0, 0]])
    assert specialisation_index(counts) == pytest.approx(1.0)
    assert math.isnan(specialisation_index(np.zeros((2, 3))))
    assert math.isnan(specialisation_index(np.ones((2, 1))))  # one role: nothing to choose


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
    # two agents with distinct fixed roles, one of them seen far more often: still fully informative
    assert role_mutual_information(np.array([[100, 0], [0, 1]])) == pytest.approx(1.0)
    # half-overlapping role distributions: H(mean) - mean H = log 2 - ½ log 2 (N = K = 2)
    counts = np.array([[2, 0], [1, 1]])
    want = (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) - 0.5 * math.log(2)) / math.log(2)
    assert role_mutual_information(counts) == pytest.approx(want)
