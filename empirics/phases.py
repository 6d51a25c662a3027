"""Where a training run's time goes: seconds per named phase, and every step's own time.

    clock = PhaseClock()
    with clock.phase("eval"):
        evaluate(...)
    clock.step(seconds, captured=False)     # the step's forward, backward and update, nothing else

Phases of `train.train_model` / `train_run`: "setup" (data and model), "eval", "capture_collect"
(host copy of a captured step's rows), "probes" (everything the probe recorder runs, snapshots
included), "log" (the logged accuracy), "checkpoint", "write" (the run's files). Steps are kept one
by one, apart by whether they captured, so a plain step's median and a captured step's extra cost
can be read off the same run (`verify.run_profile`).

Reading the clock costs ~0.1 us; nothing here synchronises a device, so on a GPU a phase's time is
the host's, and work queued asynchronously lands in whichever phase next waits for it (a step's
`loss.item()` waits for its own forward).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class PhaseClock:
    """Accumulated seconds per phase and per-step times, read from `now` (wall clock by default)."""

    now: Callable[[], float] = time.perf_counter
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    plain_steps: list[float] = field(default_factory=list)  # seconds of each step that did not capture
    captured_steps: list[float] = field(default_factory=list)  # seconds of each step that captured

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = self.now()
        try:
            yield
        finally:
            self.add(name, self.now() - started)

    def step(self, seconds: float, captured: bool) -> None:
        (self.captured_steps if captured else self.plain_steps).append(seconds)

    def as_dict(self) -> dict:
        return {"seconds": dict(self.seconds), "counts": dict(self.counts), "plain_steps": list(self.plain_steps),
                "captured_steps": list(self.captured_steps)}
