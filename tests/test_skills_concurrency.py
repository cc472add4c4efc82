"""Several processes adding to one library at once lose no entries."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

PROCESSES = 4
PER_PROCESS = 8


def _writer(path: str, worker: int, start: mp.Event) -> None:  # runs in a spawned process
    import torch

    torch.set_num_threads(1)
    from skills import ArchSpec, SkillLibrary
    from skills.network import build_network

    spec = ArchSpec(
        {"type": "box", "shape": [3], "dtype": "float32"},
        {"type": "discrete", "n": 2},
        kind="gru",
        d_model=4,
        n_layers=1,
        encoder_hidden=8,
    )
    lib = SkillLibrary.open(path)
    params = build_network(spec).state_dict()
    start.wait()
    for i in range(PER_PROCESS):
        with torch.no_grad():
            params["value.bias"].fill_(worker * 100 + i)
        lib.add(f"w{worker}/{i}", params, spec, np.array([1.0, worker, i]), source=f"w{worker}")


def test_concurrent_writers_lose_no_entries(tmp_path: Path):
    from skills import SkillLibrary

    lib = SkillLibrary.create(tmp_path / "lib")
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(lib.path), w, start)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    start.set()  # all writers go at once, after their (slow) imports
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    names = lib.list()
    assert len(names) == PROCESSES * PER_PROCESS
    assert set(names) == {f"w{w}/{i}" for w in range(PROCESSES) for i in range(PER_PROCESS)}
    assert lib.generation == PROCESSES * PER_PROCESS  # one manifest write per add
    assert lib.verify() == {}
    for w in range(PROCESSES):
        for i in range(PER_PROCESS):
            assert float(lib.params(f"w{w}/{i}")["value.bias"]) == w * 100 + i
    files = {p.name for p in (lib.path / "skills").iterdir()}
    assert len(files) == PROCESSES * PER_PROCESS  # no temp files or orphans left behind
