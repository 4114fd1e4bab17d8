"""consort's Python worker: the Appose script contract, without Appose's failure modes.

Shipped inside the consort binary and run with any python3 >= 3.9; it needs nothing
installed. Scripts written for Appose's python_worker run unchanged: inputs are variables,
`task` has update/cancel/fail/export/outputs/cancel_requested, the last expression is the
result, `queue: "main"` runs on the main thread, APPOSE_INIT_SCRIPT runs first, and shm /
ndarray inputs are attached (numpy is imported only when an ndarray arrives). Blocks its
SharedMemory and NDArray create are recorded in consort's creator registry, so that a
crashed worker's blocks are listed (`consort shm ls`) and collected (`consort shm gc`).

Where appose's worker is fragile, this one is not:
- each response is written whole under one lock: lines never interleave;
- no janitor: a task's thread sends its own terminal response, exactly one;
- no deaf receiver: a bad request fails its task (or is logged) and reading goes on;
- the main queue is FIFO, and no queued task is dropped at shutdown;
- a cancelled task that does not stop gets an asynchronous exception in its thread
  (CONSORT_HARD_CANCEL_SECS after the CANCEL, default 1 s); code blocked in C ignores it,
  and the supervisor's kill escalation is what ends it then;
- print() goes to stderr: the protocol has a private copy of stdout;
- tasks run on a pool of reused threads that take turns reading stdin: a task runs on the
  thread that read it (no handoff), and a free thread takes over reading once that task
  has run for a millisecond, so short tasks in a row run on one thread and long ones
  still run concurrently; compiled scripts are cached;
- a task that ends within a millisecond sends LAUNCH and its answer in one write.

Heartbeats (a consort extension, never sent to an Appose supervisor): only when
CONSORT_HEARTBEAT_SECS is set, a thread writes {"responseType":"HEARTBEAT"} that often,
so the supervisor can tell a stopped or wedged process from a busy one.

stdin EOF or SIGTERM: every task is asked to cancel, queued main-queue tasks are answered
CANCELATION, running ones get CONSORT_SHUTDOWN_SECS (default 1 s), then the process exits.
"""

import json
import os
import select
import sys
import threading
import time

_WRITE_LOCK = threading.Lock()
_OUT_FD = None
_MAX_THREADS = int(os.environ.get("CONSORT_WORKER_THREADS", "64"))
_HARD_CANCEL_SECS = float(os.environ.get("CONSORT_HARD_CANCEL_SECS", "1"))
_SHUTDOWN_SECS = float(os.environ.get("CONSORT_SHUTDOWN_SECS", "1"))


class TaskCancelled(BaseException):
    """Raised inside a task's thread to stop a task that ignored its cancel request."""


def _encode(obj):
    return (_ENCODER.encode(obj) + "\n").encode("ascii")


def _write_all(data):
    # Called with _WRITE_LOCK held.
    view = memoryview(data)
    while view:
        written = os.write(_OUT_FD, view)
        view = view[written:]


def _write_line(obj, uuid=None):
    """Writes one response whole, after the held-back LAUNCH of task `uuid` if any."""
    data = _encode(obj)
    with _WRITE_LOCK:
        if uuid is not None and _launches.pop(uuid, None) is not None:
            data = _encode({"task": uuid, "responseType": "LAUNCH"}) + data
        _write_all(data)


# A task that its reader runs at once has its LAUNCH held back for a moment
# (_LAUNCH_DELAY): if it ends or reports progress within it, the LAUNCH goes out in the
# same write as that response (one write, one wake-up of the supervisor, instead of two).
# The LAUNCH is held back before the next thread may read stdin (in _take, under the
# reader lock), so that thread knows to wait for input only until it is due, then sends
# it. uuid -> when it is due; guarded by _WRITE_LOCK.
_launches = {}
_LAUNCH_DELAY = 0.001


def _flush_launches(everything=False):
    """Writes the held-back LAUNCHes that are due (all, with `everything`); returns how
    long until the next is due, or None when none is held back."""
    now = time.monotonic()
    with _WRITE_LOCK:
        due = [uuid for uuid, at in _launches.items() if everything or at <= now]
        if due:
            _write_all(b"".join(_encode({"task": uuid, "responseType": "LAUNCH"})
                                for uuid in due))
            for uuid in due:
                del _launches[uuid]
        if not _launches:
            return None
        return max(0.0, min(_launches.values()) - now)


_exports = {}
_auto_counter = [0]
_auto_lock = threading.Lock()


def _encode_default(obj):
    # Shared memory and n-d arrays travel as Appose's flat appose_type objects: ours, and
    # appose's or multiprocessing's made by a script.
    shm = getattr(obj, "shm", None)
    if shm is not None and hasattr(obj, "dtype") and hasattr(obj, "shape"):
        return {"appose_type": "ndarray", "dtype": str(obj.dtype),
                "shape": [int(dim) for dim in obj.shape], "shm": _encode_default(shm)}
    if isinstance(obj, SharedMemory):
        return {"appose_type": "shm", "name": obj.name, "rsize": obj.rsize}
    mp_shm = sys.modules.get("multiprocessing.shared_memory")
    if mp_shm is not None and isinstance(obj, mp_shm.SharedMemory):
        # Handed to the service, which owns cleanup from now on (Appose's rule): this
        # process's resource tracker must not unlink it when the worker exits.
        _untrack(obj)
        return {"appose_type": "shm", "name": obj.name,
                "rsize": int(getattr(obj, "rsize", obj.size))}
    # Anything else JSON cannot hold stays in the worker, as Appose's auto-proxy does.
    with _auto_lock:
        name = "_appose_auto_%d" % _auto_counter[0]
        _auto_counter[0] += 1
    _exports[name] = obj
    return {"appose_type": "worker_object", "var_name": name}


# Built once: json.dumps and json.loads with options build a new coder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_encode_default)


_SHM_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_DTYPE_SIZES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4,
                "int64": 8, "uint64": 8, "float32": 4, "float64": 8, "complex64": 8,
                "complex128": 16, "bool": 1}
_untracked = set()
_untracked_lock = threading.Lock()
_no_register = threading.local()


def _without_tracking(make):
    """Runs make() so that the shared memory it opens is not registered with this process's
    resource tracker, which would unlink it when the worker exits (CPython gh-82300).

    Python 3.13+ has SharedMemory(track=False). Before, both create and attach call
    resource_tracker.register; unregistering afterwards works but starts the tracker
    process and races its exit, so instead register is skipped for this thread only.
    """
    from multiprocessing import resource_tracker

    register = resource_tracker.register
    if not getattr(register, "_consort", False):
        def register_unless_suppressed(name, rtype, _register=register):
            if rtype == "shared_memory" and getattr(_no_register, "active", False):
                return None
            return _register(name, rtype)

        register_unless_suppressed._consort = True
        resource_tracker.register = register_unless_suppressed
    _no_register.active = True
    try:
        return make()
    finally:
        _no_register.active = False


def _untrack(block):
    """Unregisters a multiprocessing block a script made, once, if it was registered."""
    if isinstance(block, SharedMemory) or getattr(block, "_track", True) is False:
        return
    key = getattr(block, "_name", None)
    with _untracked_lock:
        if key is None or key in _untracked:
            return
        _untracked.add(key)
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(key, "shared_memory")
    except Exception:
        pass


# The creator registry (consort::shm::registry): one file per block this worker creates,
# in the directory consort's Rust side uses, so that `consort shm ls` lists the block and,
# once this process is dead, `consort shm gc` (or the `consort run` that started it) can
# unlink a block nobody took over. Same directory rule, same format, same order: the
# record exists before the block and goes when the block is unlinked (by the service that
# received it: this worker never unlinks).
_registry_warned = [False]
# The directory last found private (checked again when the environment names another),
# and this process's start time: neither changes under a running worker.
_registry_ready = [None]
_start_time = []


def _registry_dir():
    configured = os.environ.get("CONSORT_SHM_REGISTRY")
    if configured:
        return configured
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "consort", "shm")
    return os.path.join("/tmp", "consort-%d" % os.getuid(), "shm")


def _private_dir(path):
    """Creates `path` (0700, parents too) if needed; raises unless it is a directory owned
    by this user and closed to others (anyone able to write records could make gc unlink
    live blocks)."""
    import stat

    missing = []
    probe = path
    while probe and not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
    info = os.lstat(path)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or info.st_mode & 0o022):
        raise OSError("%s is not a directory owned by uid %d and closed to others; refusing "
                      "to use it as the shared-memory registry" % (path, os.getuid()))


def _process_start():
    """This process's start time in clock ticks since boot (Linux), or "-"."""
    if not _start_time:
        try:
            with open("/proc/self/stat") as stat_file:
                text = stat_file.read()
            _start_time.append(text[text.rindex(")") + 2:].split(" ")[19])
        except (OSError, ValueError, IndexError):
            _start_time.append("-")
    return _start_time[0]


def _record_begin(name, rsize):
    """Writes the record of a block about to be created: returns (path, open fd), None if
    the registry cannot be used (said once on stderr), or False if the name is taken."""
    try:
        folder = _registry_dir()
        if _registry_ready[0] != folder:
            parent = os.path.dirname(folder)
            base = os.path.basename(parent)
            if base == "consort" or base.startswith("consort-"):
                _private_dir(parent)
            _private_dir(folder)
            _registry_ready[0] = folder
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return False
        except OSError:
            # The directory may have gone or changed: check it again next time.
            _registry_ready[0] = None
            raise
        try:
            os.write(fd, ("pid=%d\nstart=%s\npgid=%d\nrsize=%d\n" % (
                os.getpid(), _process_start(), os.getpgid(0), rsize)).encode("ascii"))
        except BaseException:
            os.close(fd)
            _record_remove(path)
            raise
        return path, fd
    except OSError as error:
        if not _registry_warned[0]:
            _registry_warned[0] = True
            print("consort worker: warning: shared memory %s (and any after it) will not be in "
                  "the registry, so `consort shm ls` will not list it: %s" % (name, error),
                  file=sys.stderr)
        return None


def _record_commit(record, block):
    """Adds the block's inode, now that it exists, and closes the record."""
    path, fd = record
    block_fd = getattr(block, "_fd", None)
    try:
        if isinstance(block_fd, int) and block_fd >= 0:
            os.write(fd, ("ino=%d\n" % os.fstat(block_fd).st_ino).encode("ascii"))
    except OSError as error:
        print("consort worker: shm registry: %s: %s" % (path, error), file=sys.stderr)
    finally:
        os.close(fd)


def _record_drop(record):
    """Removes the record of a block that was not created."""
    path, fd = record
    os.close(fd)
    _record_remove(path)


def _record_remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        print("consort worker: shm registry: removing %s: %s" % (path, error), file=sys.stderr)


def _create_block(shared_memory, size):
    """A new multiprocessing block of `size` bytes named psm_<8 hex>, recorded first."""
    import secrets

    for _ in range(64):
        name = "psm_" + secrets.token_hex(4)
        record = _record_begin(name, size)
        if record is False:
            continue
        kwargs = {"name": name, "create": True, "size": size}
        try:
            if sys.version_info >= (3, 13):
                block = shared_memory.SharedMemory(track=False, **kwargs)
            else:
                block = _without_tracking(lambda: shared_memory.SharedMemory(**kwargs))
        except FileExistsError:
            if record:
                _record_drop(record)
            continue
        except BaseException:
            if record:
                _record_drop(record)
            raise
        if record:
            _record_commit(record, block)
        return block
    raise FileExistsError("64 random shared-memory names in a row were taken")


def _check_shm_name(name):
    if (not isinstance(name, str) or not 0 < len(name) <= 30 or ".." in name
            or not set(name) <= _SHM_NAME_CHARS):
        raise ValueError("invalid shared-memory name %r: 1 to 30 characters from "
                         "[A-Za-z0-9_.-], no '/' and no '..'" % (name,))


class SharedMemory:
    """A block of shared memory, as Appose's: name, rsize, size, buf.

    SharedMemory(name, rsize) attaches; SharedMemory(rsize=n, create=True) creates a block
    named psm_<8 hex>, recorded in consort's creator registry with this process's id.
    Either way this worker never unlinks it and never lets Python's resource tracker do so
    at exit: the service that receives it owns cleanup (Appose's rule), as consort's Rust
    side does with SharedMemory.adopt(); a block nobody takes over is collected once this
    process is dead (`consort shm gc`).
    """

    def __init__(self, name=None, rsize=None, create=False):
        from multiprocessing import shared_memory

        if create:
            if rsize is None or int(rsize) < 1:
                raise ValueError("a new shared-memory block needs rsize >= 1")
            self._shm = _create_block(shared_memory, int(rsize))
        else:
            _check_shm_name(name)
            if sys.version_info >= (3, 13):
                self._shm = shared_memory.SharedMemory(name=name, track=False)
            else:
                self._shm = _without_tracking(lambda: shared_memory.SharedMemory(name=name))
        self.name = self._shm.name
        self.size = self._shm.size
        self.rsize = self.size if rsize is None else int(rsize)
        if self.rsize > self.size:
            self.close()
            raise ValueError("shared memory %r has %d bytes, fewer than the rsize %d it was "
                             "described with" % (self.name, self.size, self.rsize))
        self.buf = self._shm.buf

    def close(self):
        """Unmaps the block (numpy views of it must be gone); never unlinks it."""
        self.buf = None
        self._shm.close()

    def __repr__(self):
        return "SharedMemory(name=%r, rsize=%d, size=%d)" % (self.name, self.rsize, self.size)


class NDArray:
    """An n-d array in shared memory, as Appose's NDArray: dtype, shape, shm, ndarray().

    NDArray(dtype, shape) creates a block of the right size; ndarray() is a zero-copy
    numpy view (C order, native byte order).
    """

    def __init__(self, dtype, shape, shm=None):
        self.dtype = str(dtype)
        import operator

        self.shape = [operator.index(dim) for dim in shape]
        if any(dim < 0 for dim in self.shape):
            raise ValueError("negative dimension in shape %r" % (self.shape,))
        size = _DTYPE_SIZES.get(self.dtype)
        if size is None:
            raise ValueError("unknown dtype %r (expected one of %s)"
                             % (self.dtype, ", ".join(_DTYPE_SIZES)))
        for dim in self.shape:
            size *= dim
        if shm is None:
            shm = SharedMemory(rsize=max(size, 1), create=True)
        elif size > shm.rsize:
            raise ValueError("an ndarray of dtype %s and shape %r needs %d bytes, but its "
                             "block %r has %d" % (self.dtype, self.shape, size, shm.name,
                                                  shm.rsize))
        self.shm = shm

    def ndarray(self):
        import numpy

        count = 1
        for dim in self.shape:
            count *= dim
        return numpy.ndarray(count, dtype=self.dtype, buffer=self.shm.buf).reshape(self.shape)

    def __repr__(self):
        return "NDArray(dtype=%r, shape=%r, shm=%r)" % (self.dtype, self.shape, self.shm)


class _ApposeFallback:
    """Makes `import appose` / `from appose import NDArray, SharedMemory` work in scripts
    when appose is not installed, with this worker's classes, so that Appose scripts that
    create arrays run unchanged on a bare python3.

    It is the last finder on sys.meta_path, so an installed appose always wins (its arrays
    are encoded and untracked like ours). Scripts also see NDArray and SharedMemory as
    plain names, without importing anything.
    """

    _NAMES = ("appose", "appose.shm")

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in cls._NAMES:
            return None
        import importlib.machinery

        return importlib.machinery.ModuleSpec(name, cls, is_package=name == "appose")

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        module.NDArray = NDArray
        module.SharedMemory = SharedMemory
        module.__all__ = ["NDArray", "SharedMemory"]

        def missing(name, _module=module.__name__):
            raise AttributeError(
                "module %r has no attribute %r: appose is not installed, and consort's "
                "worker provides only NDArray and SharedMemory" % (_module, name))

        module.__getattr__ = missing


sys.meta_path.append(_ApposeFallback)


class _Invalid:
    """An input that could not be decoded: using it raises the reason.

    The decode hook must not raise: json.loads would lose the whole request, task id and
    all, and the task would never be answered.
    """

    def __init__(self, error):
        object.__setattr__(self, "_error", error)

    def __getattr__(self, name):
        raise ValueError("this input could not be decoded: %s" % self._error)

    def __repr__(self):
        return "<invalid input: %s>" % self._error


def _decode_hook(obj):
    kind = obj.get("appose_type")
    try:
        if kind == "shm":
            rsize = obj.get("rsize", obj.get("size"))
            return SharedMemory(obj.get("name"), None if rsize is None else int(rsize))
        if kind == "ndarray":
            shm = obj.get("shm")
            if isinstance(shm, _Invalid):
                return shm
            if not isinstance(shm, SharedMemory):
                raise ValueError("ndarray without a shared-memory block: %r" % (shm,))
            return NDArray(obj["dtype"], obj["shape"], shm)
    except Exception as error:
        return _Invalid("%s: %s" % (type(error).__name__, error))
    return obj


_DECODER = json.JSONDecoder(object_hook=_decode_hook)


class Task:
    """The `task` object a script sees."""

    def __init__(self, uuid, script, inputs, queue):
        self._uuid = uuid
        self._script = script
        self._inputs = inputs
        self._queue = queue
        self._finished = False
        self._lock = threading.Lock()
        self._thread_id = None
        self._timer = None
        self._hard_sent = False
        self.outputs = {}
        self.cancel_requested = False
        self._launch_held = False

    def export(self, **kwargs):
        _exports.update(kwargs)

    def update(self, message=None, current=None, maximum=None, info=None):
        args = {}
        if message is not None:
            args["message"] = str(message)
        if current is not None:
            try:
                args["current"] = int(current)
            except (TypeError, ValueError):
                pass
        if maximum is not None:
            try:
                args["maximum"] = int(maximum)
            except (TypeError, ValueError):
                pass
        args["info"] = info
        self._respond("UPDATE", args)

    def cancel(self):
        self._respond("CANCELATION", None)

    def fail(self, error=None):
        self._respond("FAILURE", None if error is None else {"error": error})

    # -- internals -----------------------------------------------------------------

    def _respond(self, response_type, args):
        terminal = response_type not in ("LAUNCH", "UPDATE")
        with self._lock:
            if self._finished:
                # One terminal response per task; after it, nothing more.
                return
            if terminal:
                self._finished = True
                if self._timer is not None:
                    self._timer.cancel()
        if response_type == "LAUNCH" and self._launch_held:
            return
        response = dict(args) if args else {}
        response["task"] = self._uuid
        response["responseType"] = response_type
        try:
            _write_line(response, self._uuid if self._launch_held else None)
        except BaseException:
            if not terminal:
                raise
            # The outputs could not be encoded: say so, once.
            import traceback

            _write_line({"error": traceback.format_exc(), "task": self._uuid,
                         "responseType": "FAILURE"}, self._uuid if self._launch_held else None)

    def _request_cancel(self):
        self.cancel_requested = True
        with self._lock:
            if self._finished or self._thread_id is None or self._timer is not None:
                return
            self._timer = threading.Timer(_HARD_CANCEL_SECS, self._hard_cancel)
            self._timer.daemon = True
            self._timer.start()

    def _hard_cancel(self):
        with self._lock:
            if self._finished or self._thread_id is None:
                return
            import ctypes

            # Raised in the task's thread at its next bytecode (not inside C calls).
            self._hard_sent = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_id), ctypes.py_object(TaskCancelled))

    def _detach(self):
        # From here on the task may not be interrupted: clear an asynchronous exception
        # that was sent but not yet raised, so it cannot fire inside a response write.
        with self._lock:
            if self._hard_sent and self._thread_id is not None:
                import ctypes

                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._thread_id), ctypes.c_void_p(0))
            self._thread_id = None

    def _run(self):
        if self.cancel_requested:
            if self._launch_held:
                # It never started: its answer is CANCELATION alone.
                with _WRITE_LOCK:
                    _launches.pop(self._uuid, None)
            self._respond("CANCELATION", None)
            return
        with self._lock:
            self._thread_id = threading.get_ident()
        try:
            self._respond("LAUNCH", None)
            binding = {"task": self, "NDArray": NDArray, "SharedMemory": SharedMemory}
            binding.update(_exports)
            if self._inputs:
                binding.update(self._inputs)
            block, last = _compile(self._script or "")
            exec(block, binding)
            result = eval(last, binding) if last is not None else None
            if isinstance(result, dict):
                self.outputs.update(result)
            elif result is not None:
                self.outputs["result"] = result
            self._detach()
            self._respond("COMPLETION", {"outputs": self.outputs})
        except TaskCancelled:
            self._detach()
            self._respond("CANCELATION", None)
        except BaseException:
            self._detach()
            import traceback

            self.fail(traceback.format_exc())
        finally:
            _tasks_done(self)


_code_cache = {}


def _compile(script):
    cached = _code_cache.get(script)
    if cached is not None:
        return cached
    import ast

    block = ast.parse(script, mode="exec")
    last = None
    if block.body and isinstance(block.body[-1], ast.Expr):
        last = compile(ast.Expression(block.body.pop().value), "<string>", "eval")
    compiled = (compile(block, "<string>", "exec"), last)
    if len(_code_cache) > 256:
        _code_cache.clear()
    _code_cache[script] = compiled
    return compiled


# -- the worker ------------------------------------------------------------------------

_tasks = {}
_tasks_lock = threading.Condition()
# Guards _pool_state and _pool_queue; free task threads wait on it.
_pool_lock = threading.Condition(threading.Lock())
_pool_queue = []
_pool_state = {"threads": 0, "starting": 0, "free": 0, "watching": False, "busy": 0.0}
_reader_lock = threading.Lock()
_eof = [False]
_main_queue = []
_main_cv = threading.Condition()
_shutdown = threading.Event()


def _tasks_done(task):
    with _tasks_lock:
        _tasks.pop(task._uuid, None)
        if not _tasks:
            _tasks_lock.notify_all()


# The task threads take turns reading stdin, and the reader runs the task it read itself,
# on the spot: handing a request to another thread would cost wake-ups (and GIL handoffs)
# on the critical path of every task. While the reader runs its task, nobody reads stdin:
# the reader's seat is *vacant*. A free thread watches the seat and takes it once it has
# been vacant for _VACANCY (so a CANCEL, or the next task, waits at most that long behind
# a long task); a reader whose task ends sooner takes its own seat back, and a stream of
# short tasks runs on one thread with no handoff at all. The watcher also sends held-back
# LAUNCHes when they fall due.
_VACANCY = _LAUNCH_DELAY
# While tasks keep coming, the watcher polls every _VACANCY instead of waiting to be woken,
# so that starting a task costs its reader no wake-up call.
_BUSY_SECS = 0.05
_vacant = [None]


def _start_thread():
    # Called with _pool_lock held.
    _pool_state["threads"] += 1
    _pool_state["starting"] += 1
    threading.Thread(target=_serve, name="consort-task", daemon=True).start()


_stdin_buffer = bytearray()


def _read_line():
    """The next line of stdin (b"" at EOF), sending held-back LAUNCHes as they fall due
    while it waits. Called with _reader_lock held."""
    while True:
        end = _stdin_buffer.find(b"\n")
        if end >= 0:
            line = bytes(_stdin_buffer[:end + 1])
            del _stdin_buffer[:end + 1]
            return line
        wait = _flush_launches() if _launches else None
        if wait is not None and not select.select([0], [], [], wait)[0]:
            continue
        try:
            data = os.read(0, 65536)
        except InterruptedError:
            continue
        if not data:
            line = bytes(_stdin_buffer)
            del _stdin_buffer[:]
            return line
        _stdin_buffer.extend(data)


def _await_seat():
    """Waits as a free thread until the reader's seat is free to take: returns False when
    the worker is shutting down instead."""
    with _pool_lock:
        _pool_state["free"] += 1
        try:
            while True:
                if _eof[0]:
                    return False
                now = time.monotonic()
                vacant = _vacant[0]
                if not _reader_lock.locked() and (vacant is None or now - vacant >= _VACANCY):
                    return True
                if _pool_state["watching"] or (vacant is None and now - _pool_state["busy"] > _BUSY_SECS):
                    _pool_lock.wait()
                    continue
                _pool_state["watching"] = True
                try:
                    _pool_lock.wait(_VACANCY if vacant is None else max(0.0, vacant + _VACANCY - now))
                finally:
                    _pool_state["watching"] = False
                if _launches:
                    _flush_launches()
        finally:
            _pool_state["free"] -= 1


def _serve():
    with _pool_lock:
        _pool_state["starting"] -= 1
    while True:
        if not _reader_lock.acquire(False):
            if not _await_seat():
                break
            continue
        # The request is acted on before the next one is read, as by a single reader: a
        # task is registered before its CANCEL is looked up, and main-queue tasks reach
        # the main thread in the order they came. Only running is left for after.
        try:
            _vacant[0] = None
            if _eof[0]:
                break
            line = _read_line()
            if not line:
                _eof[0] = True
                # No reader is left to send held-back LAUNCHes when due.
                _flush_launches(everything=True)
                _begin_shutdown()
                with _pool_lock:
                    _pool_lock.notify_all()
                break
            task = _handle(line) if line.strip() else None
            if task is not None:
                _vacant[0] = time.monotonic()
        finally:
            _reader_lock.release()
        while task is not None:
            try:
                task._run()
            except BaseException:
                # A late asynchronous exception must not kill a task thread.
                pass
            with _pool_lock:
                task = _pool_queue.pop(0) if _pool_queue else None
    with _pool_lock:
        _pool_state["threads"] -= 1


def _take(task):
    """The reader got `task`: returns it to run on this thread, or None if it was queued."""
    with _pool_lock:
        _pool_state["busy"] = time.monotonic()
        if _pool_state["free"] + _pool_state["starting"] < 1:
            if _pool_state["threads"] > _MAX_THREADS:
                # _MAX_THREADS run tasks and one reads: a thread that finishes takes it.
                _pool_queue.append(task)
                return None
            _start_thread()
        elif not _pool_state["watching"]:
            # The free threads all wait to be woken: one must watch the seat.
            _pool_lock.notify()
    if task._uuid.__class__ is str:
        task._launch_held = True
        with _WRITE_LOCK:
            _launches[task._uuid] = time.monotonic() + _LAUNCH_DELAY
    return task


def _handle(line):
    """Acts on one request line; returns the task to run on this thread, if any."""
    uuid = None
    try:
        request = _DECODER.decode(line.decode(json.detect_encoding(line), "surrogatepass"))
        if not isinstance(request, dict):
            raise ValueError("request is not a JSON object")
        uuid = request.get("task")
        kind = request.get("requestType")
        if kind == "EXECUTE":
            inputs = request.get("inputs") or {}
            if not isinstance(inputs, dict):
                raise ValueError('"inputs" is not an object')
            task = Task(uuid, request.get("script"), inputs, request.get("queue"))
            with _tasks_lock:
                _tasks[uuid] = task
            if _shutdown.is_set():
                task.cancel_requested = True
            if task._queue == "main":
                with _main_cv:
                    _main_queue.append(task)
                    _main_cv.notify()
            else:
                return _take(task)
        elif kind == "CANCEL":
            with _tasks_lock:
                task = _tasks.get(uuid)
            if task is None:
                print("No such task: %s" % uuid, file=sys.stderr)
            else:
                task._request_cancel()
        else:
            raise ValueError("unknown requestType %r" % (kind,))
    except Exception as error:
        if isinstance(error, RecursionError):
            error = "it is too deeply nested for Python's json (%s)" % error
        if not isinstance(uuid, str):
            # json could not read it (too deep, or not JSON): its task must still hear.
            uuid = _task_of(line)
        if isinstance(uuid, str):
            _write_line({"error": "bad request: %s" % error, "task": uuid,
                         "responseType": "FAILURE"})
        else:
            print("consort worker: bad request ignored: %s" % error, file=sys.stderr)


def _task_of(line):
    """The "task" string at the top level of a request that json could not decode, read
    token by token without recursion (a request too deep for json is too deep for a
    recursive reader); None when there is none."""
    import re

    try:
        text = line.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    depth = 0
    expect = None  # at the top level: "key", "colon", "value" or None
    key = None
    for match in re.finditer(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:,]', text):
        token = match.group()
        if token[0] == '"':
            if depth == 1 and expect == "key":
                key, expect = token, "colon"
            elif depth == 1 and expect == "value":
                if key == '"task"':
                    try:
                        return json.loads(token)
                    except ValueError:
                        return None
                expect = None
        elif token in "{[":
            depth += 1
            expect = "key" if depth == 1 else None
        elif token in "}]":
            depth -= 1
            if depth <= 0:
                return None
        elif depth == 1 and token == ":" and expect == "colon":
            expect = "value"
        elif depth == 1 and token == ",":
            expect = "key"
    return None


def _begin_shutdown(*_signal_args):
    _shutdown.set()
    with _tasks_lock:
        pending = list(_tasks.values())
    for task in pending:
        task._request_cancel()
    with _main_cv:
        _main_cv.notify_all()


def _run_init_script():
    path = os.environ.get("APPOSE_INIT_SCRIPT")
    if not path or not os.path.exists(path):
        return
    try:
        namespace = {}
        with open(path, "r", encoding="utf-8") as script:
            code = script.read()
        exec(code, namespace)
        for key, value in namespace.items():
            if not key.startswith("_"):
                _exports[key] = value
        os.remove(path)
    except BaseException as error:
        print("[WARNING] Init script failed: %s" % error, file=sys.stderr)


def _heartbeat(interval):
    # A bare line, not through json: it is the exact bytes the supervisor looks for.
    line = b'{"responseType":"HEARTBEAT"}\n'
    while not _shutdown.wait(interval):
        with _WRITE_LOCK:
            try:
                os.write(_OUT_FD, line)
            except OSError:
                return


def main():
    global _OUT_FD
    # The protocol gets a private copy of stdout; fd 1 becomes stderr, so that print()
    # and C libraries writing to stdout cannot corrupt the protocol.
    sys.stdout.flush()
    _OUT_FD = os.dup(1)
    os.dup2(2, 1)
    # Before the init script: a long import is not a wedged worker.
    heartbeat = os.environ.get("CONSORT_HEARTBEAT_SECS")
    if heartbeat:
        threading.Thread(target=_heartbeat, args=(max(float(heartbeat), 0.01),),
                         name="consort-heartbeat", daemon=True).start()
    _run_init_script()
    import signal

    signal.signal(signal.SIGTERM, _begin_shutdown)
    with _pool_lock:
        # A reader, and a follower to take over reading while the first task runs.
        _start_thread()
        _start_thread()
    # The main thread runs main-queue tasks, first in first out.
    while True:
        with _main_cv:
            while not _main_queue and not _shutdown.is_set():
                _main_cv.wait()
            task = _main_queue.pop(0) if _main_queue else None
        if task is None:
            break
        try:
            task._run()
        except BaseException:
            pass
    # Shutdown: every task was asked to cancel; give running ones a bounded grace.
    _flush_launches(everything=True)
    with _tasks_lock:
        _tasks_lock.wait_for(lambda: not _tasks, timeout=_SHUTDOWN_SECS)
        left = len(_tasks)
    if left:
        print("consort worker: %d task(s) still running at exit" % left, file=sys.stderr)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
