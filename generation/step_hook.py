"""A hook that long model work calls between decoding steps: to stop once nobody waits for its
result (the way vLLM aborts a request whose client went away), or to let urgent short work run
before the next step (a server's captions beside its drawings).

A caller wraps the model call in ``step_hook(hook)``; the decoding and reranking loops call
``call_step_hook()`` once per step, and a hook that raises ``Interrupted`` ends the work there. A
context variable, not a parameter, carries the hook: the pipeline's entry points (drawing,
captions, answers, edits, reranking) stay as they are, and code outside a ``step_hook`` block pays
one lookup per step. Work run from inside a hook must not change the state of the work it
interrupts; the pipeline keeps all decoding state in per-call objects, so a nested call is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_hook: ContextVar[Callable[[], None] | None] = ContextVar("unitok_step_hook", default=None)


class Interrupted(Exception):
    """Model work stopped between two steps because its hook said nobody needs its result."""


@contextmanager
def step_hook(hook: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``hook()`` runs between decoding steps, in the thread doing the work (so
    what it reads must be thread-safe); it raises ``Interrupted`` to stop the work. A nested block
    replaces the hook until it ends."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)


def call_step_hook() -> None:
    """Run the enclosing ``step_hook`` (a no-op outside one); it may raise ``Interrupted``."""
    hook = _hook.get()
    if hook is not None:
        hook()
