"""The documentation's tutorials (``experiments/tutorials/*.py``) run as scripts and print what
their pages say they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "experiments" / "tutorials"


def run_tutorial(name: str, *args: str, timeout: float = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(TUTORIALS / name), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def floats(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return [float(g) for g in match.groups()]


def test_every_tutorial_has_a_test_and_a_page():
    scripts = sorted(p.name for p in TUTORIALS.glob("*.py"))
    tested = re.findall(r'run_tutorial\("(\w+\.py)"', Path(__file__).read_text())
    assert sorted(set(tested)) == scripts
    pages = "".join(p.read_text() for p in (ROOT / "experiments/docs/tutorials").glob("*.md"))
    assert all(f"experiments/tutorials/{s}" in pages for s in scripts)


def test_own_curriculum_runs_metarl_sequence_and_reads_the_results():
    out = run_tutorial("own_curriculum.py")
    assert "stages: ['north_east', 'south_west'], scored on: [['ne_test'], ['sw_test']]" in out
    r11, r12 = floats(r"R after north_east: ([\d.]+)\s+([\d.]+)", out)
    r21, r22 = floats(r"R after south_west: ([\d.]+)\s+([\d.]+)", out)
    assert all(0.0 <= v <= 1.0 for v in (r11, r12, r21, r22))
    (avg,) = floats(r"average performance: ([\d.]+)", out)
    (forgetting,) = floats(r"forgetting: (-?[\d.]+)", out)
    assert avg == pytest.approx((r21 + r22) / 2, abs=1e-3)  # the mean of the last row of R
    assert forgetting == pytest.approx((r11 - r21) / 2, abs=1e-3)  # R[0,0] - R[1,0], over 2


def test_maml_tutorial_meta_trains_and_adapts_on_held_out_goals():
    out = run_tutorial("maml_own_policy.py", "--iterations", "4")
    norms = [float(x) for x in re.findall(r"meta-gradient norm ([\d.]+)", out)]
    assert len(norms) == 4 and all(n > 0 for n in norms)  # a meta-gradient reached θ each time
    before, after = floats(r"before adaptation (-[\d.]+), after one inner step (-[\d.]+)", out)
    assert -25.0 < before < 0.0 and -25.0 < after < 0.0  # nav2d returns: -distance per step


EWC_LINE = (
    r"{}: north_east after stage 1 ([\d.]+), north_east after stage 2 ([\d.]+), "
    r"south_west after stage 2 ([\d.]+)"
)


def test_ewc_tutorial_runs_both_variants():
    out = run_tutorial("ewc_own_loop.py", "--iterations", "2")  # a smoke run: no learning yet
    ft = floats(EWC_LINE.format("fine-tuning"), out)
    ewc = floats(EWC_LINE.format(re.escape("EWC (λ=100)")), out)
    assert ft[0] == ewc[0]  # the same first stage: EWC's penalty is 0 until a stage has ended
    assert all(0.0 <= v <= 1.0 for v in ft + ewc)


@pytest.mark.slow  # 10 s of CPU; 26-50 s of wall time on a busy 2-core machine
def test_ewc_tutorial_keeps_the_first_goal_that_fine_tuning_forgets():
    out = run_tutorial("ewc_own_loop.py")
    ft = floats(EWC_LINE.format("fine-tuning"), out)
    ewc = floats(EWC_LINE.format(re.escape("EWC (λ=100)")), out)
    assert ft[0] == ewc[0] > 0.3  # the same first stage (EWC's penalty is 0 until it ends)
    assert ewc[1] > ft[1] + 0.2  # EWC keeps much more of the first goal (seed 1: 0.62 vs 0.00)
    assert ewc[2] > 0.3  # and still learns the second


def test_skills_tutorial_agent_runs_the_nearest_library_skill():
    out = run_tutorial("skills_own_agent.py")
    assert out.count("library: 4 skills: ['diayn/0', 'diayn/1', 'diayn/2', 'diayn/3']") == 2
    assert "observation shape (2,), action space box" in out
    recorded = re.findall(r"recorded mean final position: \(([-+\d.]+), ([-+\d.]+)\)", out)
    final = re.findall(r"final position after 32 steps: \(([-+\d.]+), ([-+\d.]+)\)", out)
    assert len(recorded) == len(final) == 2
    for (rx, ry), (fx, fy) in zip(recorded, final):
        # deterministic skill, same dynamics from the same start: the agent's own env ends
        # where the library says the skill's episodes end
        assert float(fx) == pytest.approx(float(rx), abs=0.02)
        assert float(fy) == pytest.approx(float(ry), abs=0.02)


def test_ray_tutorial_checks_the_cluster_config():
    out = run_tutorial("ray_cluster.py")
    assert "RayConfig(address='auto', num_workers=32, cpus_per_worker=1.0" in out
    assert "did you mean 'ray.num_workers'" in out
    assert "ray.num_workers must be >= 1, got 0" in out
    assert "'ray.cpus_per_worker': expected float, got 'one'" in out
    assert "algo ppo keeps its episodes running in one local vector env" in out


@pytest.mark.slow  # starts a Ray instance: about 20 s on an idle 2-core machine, 37 s on a busy one
def test_ray_tutorial_local_cluster_matches_the_local_backend():
    pytest.importorskip("ray")
    out = run_tutorial("ray_cluster.py", "--local-cluster")
    assert len(re.findall(r"iteration \d: return before/after", out)) == 2
    (diff,) = floats(r"largest difference local vs ray: ([\d.e+-]+)", out)
    assert diff < 1e-4
