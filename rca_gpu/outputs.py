"""Writing outputs: atomic files, files renamed into place together, and one writer per output folder.

* :func:`write_atomic` is the one writer of an output file: each is written to a temporary name unique to the
  process in the same folder, then renamed, so a crash, a full disk or a second process never leaves a
  half-written file under a final name. A disk that is full, read-only or refuses permission gives an
  :class:`OutputError` (one line naming the file, the reason and the fix).
* :func:`together` renames a group of files into place only when every one of them was written (assign.json
  never describes an assignments.parquet that failed to be written).
* :func:`writing` (and the decorator :func:`writes_to`) holds an exclusive lock on a command's output folder
  (:data:`rca_gpu.runfiles.LOCK_FILE`, via filelock); a second writer gets :class:`FolderBusyError`, one line
  naming the holder's pid and command (kept in :data:`rca_gpu.runfiles.LOCK_HOLDER_FILE` beside the lock).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rca_gpu.errors import RcaError, printable

_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(RcaError):
    """An output file cannot be written: no space left, a read-only file system, no permission."""


class FolderBusyError(RcaError):
    """Another process holds the lock on an output folder."""


#: errno values that mean the file system refuses the write (not a bug): they become an OutputError.
_REFUSED = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EFBIG: "the file is larger than the file system allows", errno.EIO: "an input/output error",
            errno.ENAMETOOLONG: "the file name is too long"}
if hasattr(errno, "EDQUOT"):
    _REFUSED[errno.EDQUOT] = "the disk quota is exceeded"

#: Free bytes below which a failed write counts as a full disk whatever the library raised (torch and
#: safetensors wrap the OSError of a full disk in their own errors).
_FULL_BELOW = 1 << 20

_PENDING = threading.local()


def refused_reason(exc: BaseException, folder: str | Path) -> str | None:
    """Why the file system refused a write into ``folder``, from ``exc`` (its errno) or, for errors a
    library raised in its own type, from the free space left there; None for any other failure."""
    number = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and number in _REFUSED:
        return _REFUSED[number]
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    if stats.f_bavail * stats.f_frsize < _FULL_BELOW:
        return _REFUSED[errno.ENOSPC]
    return None


def refusal(path: str | Path, reason: str) -> OutputError:
    """The OutputError for ``path`` the file system refused for ``reason``, with the fix."""
    path = Path(path)
    fix = {"no space left on the device": "Free space there, or write to a folder on another device",
           "the disk quota is exceeded": "Free space there, or write to a folder on another device"}.get(
        reason, "Make the folder writable, or write to another folder")
    if "cache" in path.parts:
        fix += " (for the feature cache: --no-cache)"
    return OutputError(f"Cannot write {printable(repr(str(path)))}: {reason}. Nothing was written under that "
                       f"name. {fix}.")


def as_output_error(exc: BaseException) -> OutputError | None:
    """The OutputError for an OSError that escaped a writer (a full disk, a read-only folder, no permission),
    naming the file the error names; None for any other error. The command line's last net: such an error
    gives one line, not a traceback."""
    if isinstance(exc, OutputError):
        return exc
    if not isinstance(exc, OSError) or exc.errno is None or exc.errno not in _REFUSED:
        return None
    number = exc.errno
    name = exc.filename if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
    target = Path(os.fsdecode(name)) if name is not None else Path("the output")
    return refusal(target, _REFUSED[number])


def write_atomic(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Write ``path`` atomically with ``write(tmp)``, a function that writes a whole file at the path ``tmp``
    (a temporary name unique to this process, in the same folder), then rename it to ``path``. The file gets
    the permissions of any new file (0666 less the umask, e.g. 0644), also when ``write`` makes its own 0600
    file as mkstemp and safetensors do. Inside :func:`together` the rename waits for the group.

    Raises
    ------
    OutputError
        The file system refused the write (full, read-only, no permission): the temporary file is removed
        and ``path`` is untouched. Other errors of ``write`` are raised as they are, also after cleaning up.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        reason = refused_reason(exc, path.parent if path.parent.exists() else Path(path.anchor or "/"))
        if reason is None:
            raise
        raise refusal(path, reason) from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # after writing: a writer may replace the file with a 0600 one
        pending = getattr(_PENDING, "files", None)
        if pending is not None:
            pending.append((tmp, path))
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        reason = refused_reason(exc, path.parent) if isinstance(exc, Exception) else None
        if reason is not None:
            raise refusal(path, reason) from None
        raise
    return path


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Files written by :func:`write_atomic` inside the block are renamed into place together at its end,
    in the order written, only when the block ends without error; otherwise their temporary files are
    removed and every final name keeps what it held. (Renames need no space, so a full disk cannot stop
    the group half-way.) Nested blocks join the outer one."""
    if getattr(_PENDING, "files", None) is not None:
        yield
        return
    files: list[tuple[str, Path]] = []
    _PENDING.files = files
    try:
        yield
        _PENDING.files = None
        while files:
            tmp, path = files[0]
            os.replace(tmp, path)
            files.pop(0)
    except BaseException:
        for tmp, _ in files:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    finally:
        _PENDING.files = None


def write_text(path: Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write_atomic(path, write)


def _json_safe(value: Any) -> Any:
    """NaN/inf -> null, numpy scalars -> Python, so the JSON is standard."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, Path)):  # file-name bytes that are not UTF-8 as \xNN (rca_gpu.data.paths)
        from rca_gpu.errors import escape_surrogates

        return escape_surrogates(str(value))
    return value


def write_json(path: Path, data: Any, *, run_id: str | None = None) -> Path:
    """Write ``data`` as standard JSON (NaN/inf -> null), atomically. With ``run_id`` (``data`` a dict),
    the file carries the run's id under ``"run_id"`` (see :mod:`rca_gpu.runfolder`)."""
    if run_id is not None:
        data = {"run_id": run_id, **{k: v for k, v in data.items() if k != "run_id"}}
    return write_text(path, json.dumps(_json_safe(data), indent=2, default=str) + "\n")


def write_parquet(path: Path, frame, *, metadata: Mapping[bytes, bytes] | None = None,
                  run_id: str | None = None) -> Path:
    """Write a pandas DataFrame or a pyarrow Table as Parquet (zstd), atomically. ``metadata`` is added to
    the schema metadata (pandas' own key is kept, so the frame round-trips); ``run_id`` is stored there under
    :data:`rca_gpu.runfolder.RUN_ID_KEY`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rca_gpu.runfiles import RUN_ID_KEY

    table = frame if isinstance(frame, pa.Table) else to_arrow(frame)
    if run_id is not None:
        metadata = {**(metadata or {}), RUN_ID_KEY: run_id.encode()}
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def to_arrow(frame):
    """A pandas DataFrame as a pyarrow Table, for any values a manifest or a file system may hand over.

    Text holding file-name bytes that are not UTF-8 (Python keeps them as lone surrogates) is written with
    ``\\xNN`` escapes, as the terminal shows it; a column pyarrow cannot type (mixed objects) is written as
    text, each value by ``str``. Column names are used as they are (they are unique, see
    :data:`rca_gpu.data.sources.RESERVED_COLUMNS`).
    """
    import pyarrow as pa

    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, UnicodeError, ValueError, TypeError):
        pass
    frame = frame.copy()
    for name in frame.columns:
        column = frame[name]
        if column.dtype != object:
            continue
        try:
            pa.array(column, from_pandas=True)
            continue
        except (pa.ArrowException, UnicodeError, ValueError, TypeError):
            pass
        frame[name] = column.map(_as_text)
    return pa.Table.from_pandas(frame, preserve_index=False)


def _as_text(value: Any) -> Any:
    """A value as UTF-8-safe text (None and NaN stay missing)."""
    from rca_gpu.errors import escape_surrogates

    if value is None or (isinstance(value, float) and value != value):
        return None
    return escape_surrogates(value if isinstance(value, str) else str(value))


# --------------------------------------------------------------------------------------------------
# One writer per output folder
# --------------------------------------------------------------------------------------------------

#: Locks this process holds: lock file (real path) -> [FileLock, depth]. A command that calls another writer
#: of the same folder (run -> report) takes the lock once.
_HELD: dict[str, list[Any]] = {}
_HELD_GUARD = threading.RLock()
#: How long a second writer waits for the holder's pid and command to appear beside the lock.
_HOLDER_WAIT = 1.0


@functools.cache
def _filelock_unlinks_safely() -> bool:
    """Whether this filelock notices a lock file removed while it waited for it (4.3 does: the holder may
    then remove the file at release, so that no lock file stays behind in a user's folder)."""
    try:
        from filelock import __version__
    except ImportError:  # pragma: no cover
        return False
    parts = tuple(int(p) for p in __version__.split(".")[:2] if p.isdigit())
    return parts >= (4, 3)



def _holder_line(folder: Path, holder_file: str) -> str:
    """"pid 1234, `rca-gpu run imgs --out runs/a`, since 2026-01-01T10:00:00+00:00" from the holder file."""
    from rca_gpu.runfiles import HolderInfo, json_object

    deadline = time.monotonic() + _HOLDER_WAIT
    while True:
        info = json_object(folder / holder_file, HolderInfo)
        if info is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if info is None:
        return "a process that has not recorded its pid yet"
    command = printable(str(info.get("command") or "rca-gpu"))[:300]
    since = f", since {printable(info['since'])}" if info.get("since") else ""
    host = info.get("host")
    where = f" on {printable(host)}" if host and host != _host() else ""
    return f"pid {int(info['pid'])}{where}, `{command}`{since}"


def _host() -> str:
    import socket

    with contextlib.suppress(OSError):
        return socket.gethostname()
    return ""


def _command_line(command: str) -> str:
    """What a holder records as its command: the command line when run as ``rca-gpu``, else ``command``."""
    import shlex

    argv = sys.argv
    if argv and Path(argv[0]).name in ("rca-gpu", "rca_gpu") and len(argv) > 1:
        return "rca-gpu " + " ".join(shlex.quote(printable(a)) for a in argv[1:])
    return command


@contextlib.contextmanager
def writing(folder: str | Path, command: str, *, lock_file: str | None = None, holder_file: str | None = None,
            wait: float = 0.0, what: str = "output folder", create: bool = True) -> Iterator[Path]:
    """Hold the exclusive lock on the output folder ``folder`` while ``command`` writes there.

    The folder is created when missing (and removed again at the end when the command left nothing in it
    but the lock). The lock is ``folder/.rca-gpu.lock`` (a filelock lock: released by the system when the
    process dies, so a killed writer never leaves a stale lock); the holder's pid, command line, start time
    and host are written beside it (:data:`rca_gpu.runfiles.LOCK_HOLDER_FILE`) for the refusal of a second
    writer. ``wait``: seconds to wait for the lock before refusing. ``create``: False for a folder that must
    exist already (a run folder that report, evaluate, compare or causes write into). A folder where no lock
    can be made (missing and not to be created, read-only) is yielded without one: the command's own checks
    refuse it. Re-entrant within a process.

    Raises
    ------
    FolderBusyError
        Another process holds the lock: one line naming the folder, the holder's pid and command, and the fix.
    """
    from filelock import FileLock, Timeout

    from rca_gpu.runfiles import BOOKKEEPING, LOCK_FILE, LOCK_HOLDER_FILE

    lock_file = lock_file or LOCK_FILE
    holder_file = holder_file or LOCK_HOLDER_FILE
    folder = Path(folder).expanduser()
    key = os.path.realpath(folder / lock_file)
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            held = True
        else:
            held = False
    if held:
        try:
            yield folder
        finally:
            with _HELD_GUARD:
                _HELD[key][1] -= 1
        return
    created = _make_folder(folder) if create else ([] if folder.is_dir() else None)
    if created is None:  # cannot be made: the command's own checks name why
        yield folder
        return
    lock = FileLock(key, timeout=wait, thread_local=False)
    try:
        lock.acquire()
    except Timeout:  # the holder made the folder or uses it: nothing is removed
        raise FolderBusyError(
            f"The {what} {printable(repr(str(folder)))} is being written by another rca-gpu process "
            f"({_holder_line(folder, holder_file)}); one command at a time writes a folder. Wait for it to "
            "finish (or stop it), or pass another folder."
        ) from None
    except OSError:  # no lock file can be made here (read-only): nothing can be written either
        for path in created:
            try:
                os.rmdir(path)
            except OSError:
                break
        yield folder
        return
    with _HELD_GUARD:
        _HELD[key] = [lock, 1]
    try:
        import datetime as _dt

        with contextlib.suppress(OutputError):  # a full disk: the lock holds all the same; the command's own
            write_json(folder / holder_file, {  # first write then says what is wrong, with its context
                "pid": os.getpid(), "command": _command_line(command), "host": _host(),
                "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
        yield folder
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        try:
            with contextlib.suppress(OSError):
                os.unlink(folder / holder_file)
            # removed while held: a process that opened it meanwhile sees it gone and retries
            if _filelock_unlinks_safely():
                with contextlib.suppress(OSError):
                    os.unlink(key)
            _remove_created(created, folder, BOOKKEEPING)
        finally:
            lock.release()


def _make_folder(folder: Path) -> list[Path] | None:
    """Create ``folder`` and its missing parents; the folders created, deepest first ([] when it existed);
    None when it cannot be created or is not a folder."""
    missing = []
    probe = folder
    while not os.path.lexists(probe):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return missing if folder.is_dir() else None


def _remove_created(created: list[Path], folder: Path, bookkeeping: tuple[str, ...]) -> None:
    """Remove the folders :func:`_make_folder` created when the command left nothing in them but rca-gpu's
    bookkeeping files (a command refused before writing leaves no trace)."""
    if not created:
        return
    try:
        left = {entry.name for entry in os.scandir(folder)}
    except OSError:
        return
    if left - set(bookkeeping):
        return
    for name in sorted(left):
        with contextlib.suppress(OSError):
            os.unlink(folder / name)
    for path in created:
        try:
            os.rmdir(path)
        except OSError:
            break


def locked_folder(call_args: tuple, call_kwargs: dict, signature, argument: str) -> Path | None:
    """The folder named by the ``argument`` of a call (a path, or an object with ``.path`` such as a
    RunFolder); None when not given."""
    bound = signature.bind_partial(*call_args, **call_kwargs)
    value = bound.arguments.get(argument)
    if value is None:
        return None
    value = getattr(value, "path", value)
    return Path(value) if str(value).strip() else None


def runs_inside(argument: str, context: Callable[[Path], contextlib.AbstractContextManager]) -> Callable:
    """Decorator: the function runs inside ``context(folder)``, the folder being the one passed as its
    ``argument`` (a path or a RunFolder); without one it runs as it is."""
    import inspect

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            folder = locked_folder(args, kwargs, signature, argument)
            if folder is None:
                return function(*args, **kwargs)
            with context(folder):
                return function(*args, **kwargs)

        return wrapper

    return decorate


def writes_to(argument: str, command: str, **options: Any) -> Callable:
    """Decorator: the function writes into the folder passed as its ``argument`` (a path or a RunFolder):
    it runs inside :func:`writing` for that folder (``options`` go to it)."""
    return runs_inside(argument, lambda folder: writing(folder, command, **options))
