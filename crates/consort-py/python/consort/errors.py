"""The exceptions of consort's Python package.

Each subclasses the builtin a Python user would catch; the message is the Rust error's
text, naming the problem.

- :class:`CacheError` (a :class:`RuntimeError`): a shared cache could not do what was asked
  (too many handles open, recreated again and again by other processes, ...).
- :class:`CacheCorruptError` (a :class:`CacheError`): the file is corrupt, or was truncated
  under this process; recreate the cache.
- :class:`CacheMismatchError` (a :class:`ValueError`): a cache of that name exists with
  other parameters; pass ``recreate=True`` to replace it.

Other failures raise builtins: :class:`ValueError` for a bad argument or name,
:class:`TypeError` for a value that cannot be stored, :class:`PermissionError` for a cache
directory or file that is not private to this user, :class:`OSError` for a failed system
call.
"""

from consort._core import CacheCorruptError, CacheError, CacheMismatchError

__all__ = ["CacheCorruptError", "CacheError", "CacheMismatchError"]
