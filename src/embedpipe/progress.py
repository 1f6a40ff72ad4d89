"""A small progress protocol that pure functions report to, with listeners plugged in by callers.

The CLI plugs in a terminal bar (or plain periodic lines when not on a terminal); flows plug in a
Prefect progress artifact. Reports are per batch, never per row.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Progress(Protocol):
    """Receives progress of a unit of work whose total grows as it is discovered."""

    def start(self) -> None:
        """The work began (rates count from here; without it, from the first ``add_total``)."""
        ...

    def add_total(self, n: int) -> None:
        """More work became known (e.g. a shard was chunked)."""
        ...

    def advance(self, n: int) -> None:
        """``n`` more units were done."""
        ...

    def close(self) -> None:
        """The work ended."""
        ...


class NullProgress:
    """The no-op default."""

    def start(self) -> None:
        pass

    def add_total(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class Broadcast:
    """Fans reports out to the listeners registered in this process."""

    def __init__(self) -> None:
        self._listeners: list[Progress] = []
        self._lock = threading.Lock()

    def add(self, listener: Progress) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove(self, listener: Progress) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _each(self) -> list[Progress]:
        with self._lock:
            return list(self._listeners)

    def start(self) -> None:
        for p in self._each():
            p.start()

    def add_total(self, n: int) -> None:
        for p in self._each():
            p.add_total(n)

    def advance(self, n: int) -> None:
        for p in self._each():
            p.advance(n)

    def close(self) -> None:
        for p in self._each():
            p.close()


chunks_progress = Broadcast()
"""Process-wide progress of chunks through the model; the CLI and flows add listeners."""
