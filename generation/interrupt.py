"""Stopping model work between decoding steps once nobody waits for it (the way vLLM aborts a
request whose client went away).

A caller that knows when its work has become useless wraps the model call in
``stop_when(should_stop)``; the decoding loops call ``raise_if_stopped()`` once per step, so the
work ends within one step with ``Interrupted``. A context variable, not a parameter, carries the
check: the pipeline's entry points (drawing, captions, answers, edits, reranking) stay as they
are, and code outside a ``stop_when`` block pays one lookup per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_should_stop: ContextVar[Callable[[], bool] | None] = ContextVar("unitok_should_stop", default=None)


class Interrupted(Exception):
    """Model work stopped early because ``should_stop()`` said nobody needs its result."""


@contextmanager
def stop_when(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Within the block, decoding stops (``Interrupted``) at the first step where ``should_stop()``
    is true. ``should_stop`` is called from the thread doing the work: make it thread-safe
    (``threading.Event.is_set`` is)."""
    token = _should_stop.set(should_stop)
    try:
        yield
    finally:
        _should_stop.reset(token)


def raise_if_stopped() -> None:
    """Raise ``Interrupted`` when the enclosing ``stop_when`` check says so (a no-op outside one)."""
    should_stop = _should_stop.get()
    if should_stop is not None and should_stop():
        raise Interrupted("nobody waits for this work any more")
