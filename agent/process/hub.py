"""Fan-out of one process's events to the streams connected to it (pure: no I/O).

Every subscriber gets every event published from the moment it subscribed,
in order, in a queue of its own. Nothing is kept for later subscribers except
the end: output produced while nobody listens is dropped (the SDKs promise a
later ``connect`` the output "from then on", and a replay would show a client
that reconnects what it already printed).

Memory is bounded by backpressure instead of by dropping: ``publish`` reports
when some subscriber holds ``high_water`` bytes or more, the producer then stops
reading the process's pipes (so the process blocks in ``write``, as it would
writing to a slow terminal), and ``on_resume`` fires once every queue is down
to ``low_water``. A subscriber that goes away stops counting at once.

    producer ──publish(Data)──► Hub ──► Subscriber queue ──pop()──► stream
             ◄──on_resume()────       └► Subscriber queue ──pop()──► stream
             ──finish(End)────► every queue, and every later subscriber
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from agent.process.events import Data, End, Event

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Subscriber:
    """One stream's queue. ``wake`` is called whenever an event is queued."""

    def __init__(self, hub: Hub, wake: Callable[[], None]) -> None:
        self._hub = hub
        self._wake = wake
        self._queue: deque[Event] = deque()
        self.pending = 0  # bytes of Data queued

    def pop(self) -> Event | None:
        """The next event, or None when the queue is empty."""
        if not self._queue:
            return None
        event = self._queue.popleft()
        if isinstance(event, Data):
            self.pending -= len(event.data)
            self._hub._drained()
        return event

    def _push(self, event: Event) -> None:
        self._queue.append(event)
        if isinstance(event, Data):
            self.pending += len(event.data)
        self._wake()


class Hub:
    def __init__(
        self,
        *,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
        on_resume: Callable[[], None] | None = None,
    ) -> None:
        self._subscribers: list[Subscriber] = []
        self._high = high_water
        self._low = low_water
        self.on_resume = on_resume
        self.paused = False
        self.end: End | None = None

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, wake: Callable[[], None]) -> Subscriber:
        subscriber = Subscriber(self, wake)
        if self.end is None:
            self._subscribers.append(subscriber)
        else:
            subscriber._push(self.end)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
            self._drained()

    def publish(self, event: Data) -> bool:
        """Queue ``event`` for every subscriber; True when the producer should pause."""
        if self.end is not None:
            raise RuntimeError("publish after finish")
        for subscriber in self._subscribers:
            subscriber._push(event)
            if subscriber.pending >= self._high:
                self.paused = True
        return self.paused

    def finish(self, end: End) -> None:
        """Queue the end for every subscriber, present and future."""
        if self.end is not None:
            return
        self.end = end
        self.paused = False
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber._push(end)

    def _drained(self) -> None:
        if not self.paused or any(s.pending > self._low for s in self._subscribers):
            return
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()
