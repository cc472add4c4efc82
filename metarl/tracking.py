"""Where a run's numbers go: ``metrics.jsonl`` always, wandb (offline unless asked), a progress bar.

wandb is an optional extra (``pip install -e ".[wandb]"``). Its default mode here is
``"offline"``: runs are written under the run directory (``<run>/wandb``) and need no account or
network; ``wandb sync <run>/wandb/offline-run-*`` uploads them later. ``"online"`` logs live,
``"disabled"`` skips wandb. If wandb is not installed, the tracker says so once and keeps the local
JSONL log, which is the record of truth either way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .config import config_to_dict
from .run_dir import RunDir

log = logging.getLogger(__name__)

WandbMode = Literal["offline", "online", "disabled"]


@dataclass
class LoggingConfig:
    """Logging destinations besides the run directory's metrics.jsonl (always written)."""

    wandb: WandbMode = "offline"
    """wandb mode: offline (default, no account needed), online, or disabled"""
    project: str = "ssm-lifelong-metarl"
    """wandb project name"""
    progress: bool = True
    """show a progress bar with the ETA and headline metrics"""
    tensorboard: bool = True
    """also write TensorBoard event files to RUN_DIR/tensorboard (``tensorboard --logdir runs``)"""
    headline: tuple[str, ...] = ("episodic_return", "entropy", "approx_kl")
    """metrics shown on the progress bar"""


class Tracker:
    """Logs one row per iteration to the run directory, wandb, TensorBoard and a progress bar.

    Args:
        run: the run directory (its ``metrics.jsonl`` is always written).
        config: the logging config.
        total: iterations in the run; ``initial``: iterations already done (on resume).
        run_config: the full run config, recorded in wandb.
        resume: reattach to the run's earlier wandb run id, if any.
    """

    def __init__(
        self,
        run: RunDir,
        config: LoggingConfig,
        total: int,
        initial: int = 0,
        run_config: Any = None,
        resume: bool = False,
    ):
        self.run, self.config = run, config
        self._wandb = self._start_wandb(run_config, resume) if config.wandb != "disabled" else None
        self._tb = self._start_tensorboard(resume) if config.tensorboard else None
        self._bar = None
        if config.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                unit="it",
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 10.0,
                desc=run.path.name,
            )

    def _start_wandb(self, run_config: Any, resume: bool):
        try:
            import wandb
        except ImportError:
            log.warning(
                "wandb is not installed (pip install -e '.[wandb]'); logging to %s only",
                self.run.metrics_path,
            )
            return None
        run_id = self.run.path.name.rsplit("-", 1)[-1]
        return wandb.init(
            project=self.config.project,
            name=self.run.path.name,
            id=run_id,
            dir=str(self.run.path),
            mode=self.config.wandb,
            config=config_to_dict(run_config) if run_config is not None else None,
            resume="allow" if resume else None,
            settings=wandb.Settings(silent=True),
        )

    def _start_tensorboard(self, resume: bool):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed (pip install tensorboard); no event files")
            return None
        purge = None
        if resume:  # events after the checkpoint the run resumed from are dropped, like the rows
            rows = self.run.read_metrics()
            purge = int(rows[-1]["step"]) + 1 if rows else 0
        return SummaryWriter(str(self.run.path / "tensorboard"), purge_step=purge)

    def log(self, step: int, row: Mapping[str, Any] | Any, advance: bool = True) -> None:
        """Record one row (a dict or a dataclass) at ``step`` (environment steps); ``advance``:
        it is an iteration's row (the progress bar moves), not an extra one such as an
        evaluation."""
        if dataclasses.is_dataclass(row) and not isinstance(row, type):
            row = dataclasses.asdict(row)
        scalars = {k: v for k, v in row.items() if k != "step"}
        self.run.log_metrics(step, **scalars)
        if self._wandb is not None:
            numbers = {k: v for k, v in scalars.items() if isinstance(v, int | float)}
            self._wandb.log(numbers, step=int(step))
        if self._tb is not None:
            for key, value in scalars.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, global_step=int(step))
        if self._bar is not None and advance:
            self._bar.update(1)
            self._bar.set_postfix(_headline(scalars, self.config.headline), refresh=False)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Final numbers (e.g. evaluation results) for wandb's run summary."""
        if self._wandb is not None:
            for key, value in values.items():
                if isinstance(value, int | float | str):
                    self._wandb.summary[key] = value

    def close(self, exit_code: int = 0) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=exit_code)
            self._wandb = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _headline(scalars: Mapping[str, Any], keys: Sequence[str]) -> dict[str, str]:
    shown = {}
    for key in keys:
        value = scalars.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            shown[key] = f"{value:.4g}"
    return shown
