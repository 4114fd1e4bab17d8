"""Keeps consort's SIGBUS guard working under Python's :mod:`faulthandler`.

consort-cache installs a process-wide SIGBUS handler with the first cache it maps: a fault
in a cache file that another process truncated marks the cache truncated (every later call
raises :class:`consort.CacheCorruptError`) instead of killing the process. faulthandler
installs a SIGBUS handler of its own (``faulthandler.enable()``, ``python -X faulthandler``,
pytest) and whichever was installed last decides: faulthandler on top reports "Fatal
Python error: Bus error" and kills, and ``faulthandler.disable()`` puts back what it found,
which may be no guard at all.

So ``faulthandler.enable`` and ``faulthandler.disable`` are wrapped, once, when ``consort``
is imported: the guard steps aside (puts back the disposition it replaced), faulthandler
does its work, and the guard goes back on top, chaining to whatever faulthandler left. A
SIGBUS that is not a cache's still reaches faulthandler, which reports it; the process then
dies of it as before. Before the first cache is opened the wrappers change nothing.

A reference to the originals taken before ``consort`` was imported
(``from faulthandler import enable``) bypasses the wrappers: call it before opening a
cache, or it turns the guard off.
"""

import faulthandler
import functools
from typing import Any, Callable, TypeVar

from consort._core import _sigbus_guard_reassert, _sigbus_guard_step_aside


_F = TypeVar("_F", bound=Callable[..., Any])


def _wrap(original: _F) -> _F:
    if getattr(original, "_consort_sigbus_guard", False):
        return original

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _sigbus_guard_step_aside()
        try:
            return original(*args, **kwargs)
        finally:
            _sigbus_guard_reassert()

    wrapper._consort_sigbus_guard = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def install() -> None:
    """Wraps ``faulthandler.enable`` and ``faulthandler.disable`` (idempotent)."""
    faulthandler.enable = _wrap(faulthandler.enable)
    faulthandler.disable = _wrap(faulthandler.disable)
