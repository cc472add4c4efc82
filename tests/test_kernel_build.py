"""The fused CPU kernels' build: keyed by environment, and an interrupt leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssm import backend


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list processes")
@pytest.mark.skipif(not backend.cpu_kernels_enabled(), reason="fused CPU kernels disabled")
def test_interrupted_build_leaves_no_compiler_and_no_lock(tmp_path):
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import ssm.backend as b; b.cpu_ext()"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # a shell that starts jobs in the background (nohup, CI runners) ignores SIGINT for them,
        # and Python keeps an inherited SIG_IGN: restore the default, as a terminal has it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.rglob("build.ninja")):
        time.sleep(0.2)
    if not list(tmp_path.rglob("build.ninja")):
        proc.kill()
        pytest.skip("the build did not start within 120 s (no compiler here?)")
    time.sleep(1.0)  # the compiler is running now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, "the interrupt should stop the process"
    assert b"KeyboardInterrupt" in err
    time.sleep(0.5)
    assert _processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.rglob("lock")) == []


def test_build_name_depends_on_the_environment(monkeypatch):
    """Two environments (another sys.prefix) get two build folders instead of rebuilding over
    each other."""
    names = []

    def fake_load(**spec):
        names.append(spec["name"])
        raise RuntimeError("not building in this test")

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(backend, "_build_in_child", lambda spec: None)
    for prefix in ("/env/a", "/env/b", "/env/a"):
        monkeypatch.setattr(backend._CPU, "state", "unloaded")
        monkeypatch.setattr(backend._CPU, "module", None)
        monkeypatch.setattr(sys, "prefix", prefix)
        assert backend.cpu_ext() is None  # the failure is logged, the reference path is used
    assert names[0] != names[1] and names[0] == names[2]
