"""The one run harness: a :class:`Trainer` in, a run directory out.

Every command that trains (``metarl train``, ``resume``, ``sequence``, ``population``, and the
baselines ``adapt-eval`` trains) runs its trainer through :func:`run_loop`::

    status.json ← running
    until trainer.done:
        stop_after / time limit / SIGINT or SIGTERM  →  checkpoint, status stopped / interrupted
        rows ← trainer.step()                 a non-finite loss: status diverged, the last good
                                              checkpoint stays the newest (TrainingDiverged)
        metrics.jsonl, Tracker (progress bar, wandb) ← rows
        every run.checkpoint_every iterations, at the end, and when the trainer asks:
            checkpoint {trainer state, global RNG states}; status.json updated
    finish()                                  the command's evaluation and result files
    status.json ← finished

A checkpoint is where work is safe: a stopped or interrupted run is checkpointed at the iteration
it stopped after, so ``resume`` loses nothing. :func:`restore` loads the newest readable
checkpoint and drops the metrics rows logged after it (a killed run's).

:class:`Trainer` is the protocol every learner meets (PPO, RL², the MAML family, the population,
the continual sequence), and :func:`parse_config_args` / :func:`check_resume_overrides` are the one
CLI rule for "config file, then key=value overrides" and for what a resume may change (defined in
:mod:`metarl.cli_args`, re-exported here).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ssm.util import write_atomic

from .cli_args import RESUME_PREFIXES, check_resume_overrides, parse_config_args
from .run_dir import RunDir, capture_rng_state, restore_rng_state
from .tracking import Tracker
from .train_config import RunConfig

log = logging.getLogger(__name__)

__all__ = [
    "RESUME_PREFIXES",
    "STATUS_FILE",
    "Trainer",
    "TrainingDiverged",
    "check_resume_overrides",
    "parse_config_args",
    "restore",
    "run_loop",
    "seed_everything",
    "write_status",
]

STATUS_FILE = "status.json"


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or inf; the run stopped and its last good checkpoint was kept."""


@runtime_checkable
class Trainer(Protocol):
    """What the harness drives. Optional extras: ``status_fields() -> dict`` (more fields for
    ``status.json``, e.g. the stage) and ``checkpoint_due() -> bool`` (checkpoint now, e.g. at a
    stage's end)."""

    iteration: int
    """iterations done"""
    iterations: int
    """iterations in the run"""
    global_step: int
    """environment steps so far"""

    @property
    def done(self) -> bool: ...

    def step(self) -> Any:
        """One iteration; returns its log row (a mapping or an object with ``as_dict()``), or a
        list of rows (a training row, then e.g. evaluation rows)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None: ...


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (Python, numpy, torch) from the run's seed: third-party code (envs,
    initialisers) draws from them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds third-party code that uses the global)
    torch.manual_seed(seed)


# --- status and checkpoints -------------------------------------------------------------------


def write_status(run: RunDir, status: str, trainer: Trainer, message: str | None = None) -> None:
    """``status.json``: the run's state for whoever watches it (written atomically)."""
    body: dict[str, Any] = {
        "status": status,
        "iteration": trainer.iteration,
        "iterations": trainer.iterations,
        "global_step": trainer.global_step,
        "message": message,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    extra = getattr(trainer, "status_fields", None)
    if extra is not None:
        body.update(extra())
    write_atomic(run.path / STATUS_FILE, (json.dumps(body, indent=2) + "\n").encode())


def checkpoint(run: RunDir, trainer: Trainer, keep: int) -> None:
    state = {"trainer": trainer.state_dict(), "rng": capture_rng_state()}
    record = policy_record(getattr(trainer, "policy", None))
    if record is not None:  # what metarl.load needs, without the config or the trainer's code
        state["policy"] = record
    run.save_checkpoint(trainer.global_step, state, keep=keep)


def policy_record(policy: Any) -> dict[str, Any] | None:
    """A trainer's policy as a checkpoint entry: its kind, its spec (a JSON string) and its
    weights; None for a trainer without one policy (a population)."""
    kinds = {"SequencePolicy": "sequence", "ProgressivePolicy": "progressive"}
    kind = kinds.get(type(policy).__name__)
    if kind is None:
        return None
    return {
        "kind": kind,
        "spec": json.dumps(policy.spec.to_json(), sort_keys=True),
        "state": {k: v.detach().clone() for k, v in policy.state_dict().items()},
    }


def restore(run: RunDir, trainer: Trainer) -> bool:
    """Load the newest readable checkpoint into ``trainer`` and the global RNGs, and drop the
    metrics rows logged after it; with no checkpoint, drop every row (the run starts over in the
    same directory). Returns whether a checkpoint was loaded."""
    if not run.checkpoints():
        run.rewind_metrics(-1)
        return False
    state = run.load_checkpoint("latest")
    if "trainer" not in state:  # written before the one harness: the trainer's state inline
        state = {"trainer": {k: v for k, v in state.items() if k != "rng"}, "rng": state["rng"]}
    trainer.load_state_dict(state["trainer"])
    restore_rng_state(state["rng"])
    dropped = run.rewind_metrics(trainer.global_step)
    log.info(
        "resumed %s at iteration %d (dropped %d metrics rows logged after the checkpoint)",
        run.path,
        trainer.iteration,
        dropped,
    )
    return True


# --- interrupts -------------------------------------------------------------------------------


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current iteration (a second SIGINT stops at
    once)."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __call__(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = name
        log.warning("%s: stopping after this iteration (checkpointed; resume continues)", name)


@contextmanager
def _stop_on_signals(request: _StopRequest):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- the loop ---------------------------------------------------------------------------------


def _rows(result: Any) -> list[Mapping[str, Any]]:
    rows = result if isinstance(result, list) else [result]
    return [r.as_dict() if hasattr(r, "as_dict") else dict(r) for r in rows]


def run_loop(
    run: RunDir,
    trainer: Trainer,
    settings: RunConfig,
    tracker: Tracker | None = None,
    finish: Callable[[], Any] | None = None,
) -> str:
    """Drive ``trainer`` to its end in ``run`` (module docstring); returns the final status:
    ``finished``, ``stopped`` (``run.stop_after`` or ``run.time_limit_minutes``) or
    ``interrupted`` (SIGINT/SIGTERM). Raises :class:`TrainingDiverged` on a non-finite loss."""
    request = _StopRequest()
    ran, started = 0, time.monotonic()
    saved_at = trainer.iteration if run.checkpoints() else -1
    exit_code = 1
    limit = settings.time_limit_minutes

    def stop(status: str, message: str | None) -> str:
        if trainer.iteration != saved_at:
            checkpoint(run, trainer, settings.keep_checkpoints)
        write_status(run, status, trainer, message)
        return status

    write_status(run, "running", trainer)
    try:
        with _stop_on_signals(request):
            while not trainer.done:
                if request.signal is not None:
                    exit_code = 0
                    return stop("interrupted", f"{request.signal} received")
                if settings.stop_after is not None and ran >= settings.stop_after:
                    exit_code = 0
                    return stop("stopped", f"run.stop_after={settings.stop_after} reached")
                if limit is not None and ran and time.monotonic() - started >= 60 * limit:
                    exit_code = 0
                    return stop("stopped", f"time limit of {limit:g} min reached")
                try:
                    result = trainer.step()
                except FloatingPointError as e:
                    last = run.checkpoints()
                    kept = f"; last good checkpoint: {last[-1]}" if last else "; no checkpoint yet"
                    message = f"{e}{kept}"
                    write_status(run, "diverged", trainer, message)
                    raise TrainingDiverged(message) from e
                ran += 1
                for i, row in enumerate(_rows(result)):
                    step = row.pop("global_step", trainer.global_step)
                    if tracker is not None:
                        tracker.log(step, row, advance=i == 0)
                    else:
                        run.log_metrics(step, **row)
                due = getattr(trainer, "checkpoint_due", None)
                every = settings.checkpoint_every
                if (
                    trainer.done
                    or (every and trainer.iteration % every == 0)
                    or (due is not None and due())
                ):
                    checkpoint(run, trainer, settings.keep_checkpoints)
                    saved_at = trainer.iteration
                    write_status(run, "running", trainer)
            if finish is not None:
                finish()
            write_status(run, "finished", trainer)
            exit_code = 0
            return "finished"
    except KeyboardInterrupt:  # a second SIGINT: stop now, keep the last checkpoint
        write_status(run, "interrupted", trainer, "interrupted during an iteration")
        raise
    finally:
        if tracker is not None:
            tracker.close(exit_code)
        trainer.close()
