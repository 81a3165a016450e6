"""The time a process spent stopped (SIGSTOP, Ctrl-Z) and continued, so that a run's hours count only the
time it ran.

Linux keeps no account of it and a stopped process cannot notice it is stopped, but when it is continued it
receives SIGCONT. A daemon thread ticks every `TICK_S`: a tick more than `LATE_S` late is a candidate gap,
counted as stopped once a SIGCONT handled after it began, before the next one began and at most `CONFIRM_S`
after it ended confirms it (the handler runs in the main thread, between two of its Python steps, so it can
come a training step late). A thread merely late (starved of the CPU or of the GIL) without a SIGCONT does
not count.
"""
import math
import signal
import threading
import time
from typing import List, Optional, Tuple

TICK_S = 0.5
LATE_S = 2.0
CONFIRM_S = 300.0


class StoppedTime:
    """Seconds this process has spent stopped since `start()`, within about `TICK_S` per stop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._gaps: List[Tuple[float, float]] = []  # (start, end) of late ticks, monotonic seconds
        self._continued: List[float] = []  # when SIGCONT was handled
        self._thread: Optional[threading.Thread] = None
        self._previous = None

    def start(self) -> 'StoppedTime':
        """Tick and listen for SIGCONT; without the main thread (no signal handler) nothing counts as stopped."""
        if self._thread is not None or threading.current_thread() is not threading.main_thread() or \
                not hasattr(signal, 'SIGCONT'):
            return self
        self._previous = signal.getsignal(signal.SIGCONT)
        signal.signal(signal.SIGCONT, self._on_continue)
        self._thread = threading.Thread(target=self._tick, name='timm-spa-stopped-time', daemon=True)
        self._thread.start()
        return self

    def _on_continue(self, signum, frame) -> None:
        with self._lock:
            self._continued.append(time.monotonic())
        if callable(self._previous):  # a handler someone installed before keeps working
            self._previous(signum, frame)

    def _tick(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(TICK_S)
            now = time.monotonic()
            if now - last - TICK_S > LATE_S:
                with self._lock:
                    self._gaps.append((last, now))
            last = now

    def seconds(self) -> float:
        """Stopped seconds so far: the late ticks that a SIGCONT confirms, each SIGCONT confirming only the
        last late tick that began before it."""
        with self._lock:
            gaps, continued = list(self._gaps), list(self._continued)
        nexts = [start for start, _ in gaps[1:]] + [math.inf]  # a SIGCONT after the next gap began is that one's
        return sum(end - start - TICK_S for (start, end), until in zip(gaps, nexts[:len(gaps)], strict=True)
                   if any(start <= t <= min(end + CONFIRM_S, until) for t in continued))


_PROCESS = StoppedTime()


def stopped_seconds() -> float:
    """Seconds this process has spent stopped since it first asked (which starts the count)."""
    return _PROCESS.start().seconds()


def running_clock() -> float:
    """A monotonic clock in seconds that stands still while this process is stopped: what durations of
    work (a step, an epoch) are measured with."""
    return time.monotonic() - stopped_seconds()


class EpochClock:
    """An epoch's running seconds (stopped time left out) and its stopped seconds, counted from now on top of
    what a recovery checkpoint carried from the part of the epoch before an interruption."""

    def __init__(self, carried_s: float = 0.0, carried_stopped_s: float = 0.0):
        self._start, self._stopped_start = running_clock(), stopped_seconds()
        self._carried_s, self._carried_stopped_s = carried_s, carried_stopped_s

    def stopped_s(self) -> float:
        return self._carried_stopped_s + stopped_seconds() - self._stopped_start

    def running_s(self) -> float:
        return self._carried_s + running_clock() - self._start
