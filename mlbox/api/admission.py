"""Admission of requests by their expected queue time, the worker's hard cap and per-token limits (429 + Retry-After).

A worker runs one request's work at a time on its event loop (`serve.threads` are the
intra-op threads of that one inference, not parallel slots). Requests that are ready to
run — authenticated, body complete — are admitted and then yield once to the loop, so
every request admitted before them runs first: `waiting` is exactly the queue ahead.
The expected wait of a newcomer is `waiting` × the mean service time, an exponentially
weighted moving average of what one request measurably costs the loop: a request's
measured wait from ready to its turn divided by the requests that were ahead of it (the edge
protocol stamps both), and, while a queue stands, the time from one turn to the next
(everything the loop did meanwhile — parsing, answering, shedding, being descheduled — is
the price of one request then); when the queue empties, the last request's own work. The mean (not a percentile) is the right estimator here: the
wait is the *sum* of the services ahead, and a sum of n services is n × their mean. A request whose
expected wait is over `serve.max_queue_ms` is answered 429 at once — before it waits, so
a shed client learns it in about the time one 429 takes, and an admitted one waits at
most about the bound (CoDel's dequeue-time sojourn check would shed only after the wait).
Retry-After is that expected wait rounded up to whole seconds, at least 1.

Under a flood even a 429 costs the loop something, and requests whose ASGI task has not run
yet are not admitted yet; so the edge protocol (api/edge.py) counts every predict request
from its complete body to its answer (`pending`: the loop's whole queue) and, while that
queue would take longer than the bound, answers new predict requests 429 itself from the
parsed head, without an ASGI task. `WORKER` is this process's Admission for it to read.

Slow uploads never hold a slot: the body is read before admission (and bounded in time
by the edge protocol, api/edge.py). One token cannot take every slot either: a token with
`serve.max_concurrency_per_token` requests outstanding (from authentication to answer,
uploads included) gets 429 naming that limit while other tokens are served.

The hot path is a few attribute reads and arithmetic; nothing here takes a lock (one
event loop per worker).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from mlbox.errors import Overloaded

EWMA_WEIGHT = 0.05  # each measured service time moves the mean 5%: about the last 20-40 requests count
WORKER: Admission | None = None  # this worker process's admission state, read by the edge protocol (one per process)


class Admission:
    """One worker's admission state: the admitted queue, the mean service time, and requests outstanding per token."""

    def __init__(
        self, *, max_queue_ms: float, max_concurrency: int, per_token: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.max_queue_s = max_queue_ms / 1000
        self.max_concurrency = max_concurrency
        self.per_token = per_token
        self.clock = clock
        self.waiting = 0  # admitted and not answered yet: queued behind the loop or running
        self.service_s = 0.0  # mean service time; 0 until the first request is measured (nothing is shed before)
        self.tokens: dict[str, int] = {}
        self.pending = 0  # predict requests ready to run and not answered, counted by the edge protocol (api/edge.py)
        self.shed = 0  # requests refused by queue time or the cap (a 429 each)
        self.last_turn = 0.0  # when the last admitted request's work began; 0 while the queue is empty
        self.on_shed: Callable[[], None] = lambda: None  # counts a 429 the edge protocol answered itself

    def expected_wait_s(self) -> float:
        """How long a request admitted now would wait for its turn: the queue ahead × the mean service time."""
        return self.waiting * self.service_s

    def refusal(self) -> Overloaded | None:
        """The 429 for a request ready to run now (its expected wait over the bound, or the worker at its cap), else None."""
        ahead = self.waiting
        wait = ahead * self.service_s
        if wait <= self.max_queue_s and ahead < self.max_concurrency:
            return None
        self.shed += 1
        if ahead >= self.max_concurrency:
            reason = f"the server is at capacity ({ahead} requests admitted; serve.max_concurrency is {self.max_concurrency})"
        else:
            bound = self.max_queue_s * 1000
            reason = f"the server is overloaded: expected wait {wait * 1000:.1f} ms, over serve.max_queue_ms {bound:g}"
        return overloaded(reason, wait)

    def overloaded_now(self) -> bool:
        """Whether the requests ready to run ahead (counted by the edge protocol from their complete body to their
        answer, so the loop's own queue is in it too) would take longer than the bound: its cheap check at a head."""
        return max(self.pending, self.waiting) * self.service_s > self.max_queue_s

    def admit(self) -> None:
        """Count a request admitted (call right after `refusal` said None)."""
        self.waiting += 1

    def turn(self) -> float:
        """An admitted request's work begins (after its wait); the clock then, for `finish`."""
        now = self.clock()
        if self.last_turn and self.waiting > 1:  # a queue stood since the last turn: what the loop did is one request's cost
            self._observe(now - self.last_turn)
        self.last_turn = now
        return now

    def waited(self, waited_s: float, ahead: int) -> None:
        """A request waited `waited_s` from ready to its turn behind `ahead` others (stamped by the edge protocol):
        the wait per request ahead is a direct sample of the service time, loop lag and all."""
        if ahead > 0:
            self._observe(waited_s / ahead)

    def finish(self, turn: float) -> None:
        """An admitted request is answered; `turn` is what `turn()` returned for it."""
        self.waiting -= 1
        if self.waiting == 0:  # the queue is empty: this request's own work is the sample, and no queue stands
            self._observe(self.clock() - turn)
            self.last_turn = 0.0

    def _observe(self, took: float) -> None:
        self.service_s += EWMA_WEIGHT * (took - self.service_s) if self.service_s else took

    def cancel(self) -> None:
        """An admitted request ended before its work began (its client left): nothing is measured."""
        self.waiting -= 1
        if self.waiting == 0:
            self.last_turn = 0.0

    def token_refusal(self, token: str) -> Overloaded | None:
        """The 429 for one more request of `token` when it already has `serve.max_concurrency_per_token` outstanding."""
        held = self.tokens.get(token, 0)
        if held < self.per_token:
            return None
        return overloaded(
            f"this token has {held} requests outstanding; serve.max_concurrency_per_token is {self.per_token}",
            self.expected_wait_s(), hint="send fewer requests at once with this token, or use one token per client",
        )

    def token_enter(self, token: str) -> None:
        self.tokens[token] = self.tokens.get(token, 0) + 1

    def token_leave(self, token: str) -> None:
        held = self.tokens.get(token, 0) - 1
        if held > 0:
            self.tokens[token] = held
        else:
            self.tokens.pop(token, None)  # the map holds only tokens with requests outstanding


def retry_after(wait_s: float) -> int:
    """An honest Retry-After: the expected wait for the queue ahead to drain, in whole seconds, at least 1."""
    return max(1, math.ceil(wait_s))


def overloaded(message: str, wait_s: float, hint: str | None = None) -> Overloaded:
    seconds = retry_after(wait_s)
    return Overloaded(message, hint=hint or f"retry after {seconds} s", headers={"Retry-After": str(seconds)})
