"""Terminal progress: a live bar with counts, rate and ETA on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import re

from embedpipe.cli import TerminalProgress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = TerminalProgress(out, interval=0.0)
    p.add_total(100)
    p.advance(40)
    p.advance(60)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"embedpipe: embedded 40/100 chunks \(\d+(\.\d+)?/s, eta \d+s\)", lines[0]), lines[0]
    assert lines[1].startswith("embedpipe: embedded 100/100 chunks") and "\x1b" not in out.getvalue()


def test_plain_lines_are_periodic_not_per_batch() -> None:
    out = io.StringIO()
    p = TerminalProgress(out, interval=3600.0)
    p.add_total(1000)
    for _ in range(9):
        p.advance(100)  # within the interval: no line until the work is done
    p.advance(100)
    assert out.getvalue().count("\n") == 2  # the first report and the final one


def test_live_bar_on_a_terminal_shows_counts_rate_and_eta() -> None:
    out = FakeTTY()
    p = TerminalProgress(out)
    assert p.tty
    p.add_total(200)
    p.advance(50)
    p._bar.refresh()
    frame = out.getvalue()
    p.close()
    assert "50/200" in frame and "embedding" in frame
    assert re.search(r"\d+(\.\d+)?/s", frame) and re.search(r"\d+:\d\d:\d\d|-:--:--", frame)  # rate and ETA


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_counts_from_the_start_when_a_whole_shard_lands_at_once() -> None:
    """Under Dask a shard's chunks are reported in one go when it lands (issue 13: the line showed
    `embedded 33/33 chunks (2805645.4/s)`): the rate is over the time since the embedding began."""
    clock, out = Clock(), io.StringIO()
    p = TerminalProgress(out, interval=0.0, clock=clock)
    p.start()
    clock.now += 11.0  # the workers embed the first shard
    p.add_total(33)
    p.advance(33)
    assert out.getvalue() == "embedpipe: embedded 33/33 chunks (3.0/s, eta 0s)\n"


def test_rate_without_start_counts_from_the_first_total() -> None:
    clock, out = Clock(), io.StringIO()
    p = TerminalProgress(out, interval=0.0, clock=clock)
    clock.now += 30.0  # the model loads: not counted
    p.add_total(100)
    clock.now += 5.0
    p.advance(20)
    assert out.getvalue() == "embedpipe: embedded 20/100 chunks (4.0/s, eta 20s)\n"


def test_broadcast_start_reaches_every_listener() -> None:
    from embedpipe.progress import Broadcast

    clock, out = Clock(), io.StringIO()
    listener = TerminalProgress(out, interval=0.0, clock=clock)
    b = Broadcast()
    b.add(listener)
    b.start()
    clock.now += 2.0
    b.add_total(10)
    b.advance(10)
    assert "(5.0/s" in out.getvalue()
