"""Stop training when a time budget is spent (wall clock, or CPU time of this process)."""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

CLOCKS = ("wall", "process")


class TimeBudgetCallback(TrainerCallback):
    """End training after the optimizer step that exhausts ``max_seconds``, saving a checkpoint.

    Args:
        max_seconds: budget in seconds (> 0), counted from ``on_train_begin`` of this run.
        clock: ``"wall"`` (``time.perf_counter``) or ``"process"`` (``time.process_time``: CPU seconds
            of every thread of this process, so other jobs on a shared machine do not eat the budget).

    After training, ``stopped_at`` is the step at which the budget ran out (``None`` if it did not)
    and ``elapsed`` the seconds spent on the chosen clock.
    """

    def __init__(self, max_seconds: float, clock: str = "wall") -> None:
        if not max_seconds > 0:
            raise ValueError(f"max_seconds={max_seconds!r} must be > 0")
        if clock not in CLOCKS:
            raise ValueError(f"clock={clock!r} is not one of {', '.join(CLOCKS)}")
        self.max_seconds, self.clock = float(max_seconds), clock
        self._now = time.perf_counter if clock == "wall" else time.process_time
        self._start = None
        self.stopped_at: int | None = None
        self.elapsed = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        self.elapsed = self._now() - self._start
        if self.elapsed >= self.max_seconds and not control.should_training_stop:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
            self.stopped_at = state.global_step
            logger.info(
                "time budget of %.0f %s seconds spent at step %d",
                self.max_seconds,
                self.clock,
                state.global_step,
            )
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.elapsed = self._now() - self._start
