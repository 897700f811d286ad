"""The circuit breaker of one upstream: closed (routed to) -> open after `failures` consecutive
failures (ejected) -> half-open once `cooldown` seconds have passed (one trial request or health
check may go through) -> closed on a success, open again on a failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, failures: int = 3, cooldown: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.consecutive = 0
        """Failures since the last success."""
        self.opened_at: float | None = None
        self.trial = False
        """A half-open trial is in flight: no other request goes until it ends."""
        self.opens = 0
        """Times the breaker has opened (ejections)."""

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def retry_in(self) -> float:
        """Seconds until an open breaker half-opens (0 when it is not open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def allows(self) -> bool:
        """Whether a request may be sent now (without taking the half-open trial)."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self.trial)

    def acquire(self) -> bool:
        """Take the right to send one request: always when closed; the single trial when
        half-open."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.trial:
            self.trial = True
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.trial = False

    def failure(self) -> None:
        self.consecutive += 1
        was_trial, self.trial = self.trial, False
        if self.opened_at is not None:
            if was_trial or self.state == "half_open":
                self.opened_at = self.clock()  # the trial failed: another full cooldown
        elif self.consecutive >= self.threshold:
            self.opened_at = self.clock()
            self.opens += 1

    def release(self) -> None:
        """A request that ended neither way (the client went away, a 4xx): a half-open trial
        is given back so that the next one can be made."""
        self.trial = False
