"""Atomic writes of every artifact: a file appears complete, or the previous one stays untouched.

A write goes to a hidden temp entry beside the target (``.NAME.<pid>.<token>.tmp``, same folder,
hence same file system), is flushed to disk, and is renamed over the target with ``os.replace``
only when complete. The temp entry is created with mode ``0o666`` (a folder ``0o777``) so the
kernel applies the user's umask, as for any normal file (``tempfile.mkstemp`` would give 0600 and
hide the model from a Triton server running as another user).

A folder (:func:`atomic_folder`) is built the same way under a temp name and renamed into place
whole, the folder it replaces renamed aside and removed after.

Clean-up: an exception removes the temp entry; :func:`cleanup_on_signals` (installed by the CLI)
removes every temp entry in flight on SIGINT/SIGTERM before the process stops. SIGKILL cannot be
caught: its temp entry stays until the next write of the same target, which removes temp entries
whose process is gone.

ONNX models over the 2 GiB protobuf limit (``onnx.checker.MAXIMUM_PROTOBUF``) are written with their tensors in one external
data file ``NAME.<token>.data`` (see :func:`save_onnx`).
"""

import glob
import os
import re
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx

from dyconv_deploy.errors import DyconvError

_IN_FLIGHT: set[Path] = set()  # temp entries written now; removed by the signal handler
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{16}\.tmp$")


@contextmanager
def atomic_path(path: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Yield a fresh temp path beside ``path`` to write; on normal exit it replaces ``path``.

    The temp path exists already: an empty file (mode ``0o666 & ~umask``), or with ``folder=True``
    an empty folder (``0o777 & ~umask``) whose contents the caller moves out itself before the
    block ends (the folder is removed then, and never renamed onto ``path``). On an exception
    (or a signal, see :func:`cleanup_on_signals`) the temp entry is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise DyconvError(f"cannot write {path}: it is a folder; give a file name")
    _check_parents(path)
    with _staged(path, _make_folder if folder else _create, _keep_out if folder else _publish) as temp:
        yield temp


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh empty temp folder beside the folder ``path`` to fill; on normal exit it becomes ``path``.

    The temp folder (mode ``0o777 & ~umask``, removed on an exception or a signal like the entries of
    :func:`atomic_path`) is renamed onto ``path``. An existing ``path`` is renamed aside first, removed
    once the new folder is in place, and renamed back when that rename fails or is interrupted.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DyconvError(f"cannot write the folder {path}: it is a file")
    _check_parents(path)
    with _staged(path, _make_folder, _swap_in) as temp:
        yield temp


@contextmanager
def _staged(path: Path, create, publish) -> Iterator[Path]:
    """The temp entry's life for :func:`atomic_path` and :func:`atomic_folder`: ``create(temp)`` beside
    ``path`` (stale temps of dead runs swept first), yield it, ``publish(temp, path)`` on normal exit; the
    temp entry is removed in every case and tracked for the signal handler meanwhile."""
    temp = _temp_for(path)
    with _write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        create(temp)
    _IN_FLIGHT.add(temp)
    try:
        with _write_errors(path):
            yield temp
            publish(temp, path)
    finally:
        _remove(temp)
        _IN_FLIGHT.discard(temp)


def _make_folder(temp: Path) -> None:
    os.mkdir(temp, 0o777)  # the umask applies


def _keep_out(temp: Path, path: Path) -> None:
    """Publishing a ``folder=True`` temp of :func:`atomic_path`: nothing, its caller moved the contents out."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike,
              external_data_threshold: int | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; ``model`` itself is not modified.

    Over ``external_data_threshold`` serialised bytes (default: ``onnx.checker.MAXIMUM_PROTOBUF``, the
    2 GiB protobuf limit, read at call time) the tensors of 1 KiB and more go to ``NAME.<token>.data``
    beside ``path`` (ONNX external data, loaded by ``onnx.load`` and ONNX Runtime from the model's
    folder); smaller ones (shapes) stay inline, where shape inference with data propagation reads them. The data file gets a new name on every
    write and is in place before the model file is renamed, so ``path`` always names a model whose
    data exists; the data files of earlier writes (and of one that failed between the two renames)
    are removed after the next successful write.
    """
    path = Path(path)
    limit = onnx.checker.MAXIMUM_PROTOBUF if external_data_threshold is None else external_data_threshold
    if model.ByteSize() <= limit:
        atomic_write_bytes(path, model.SerializeToString())
        _remove_external_data(path, keep=None)
        return path
    data_name = f"{path.name}.{secrets.token_hex(8)}.data"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model moves the tensors of the proto it writes out to the data file
    with atomic_path(path, folder=True) as folder:
        _create(folder / data_name)  # onnx would create it with mode 0600
        onnx.save_model(copy, folder / path.name, save_as_external_data=True, location=data_name)
        _publish(folder / data_name, path.parent / data_name)  # a new name: nothing refers to it yet
        _publish(folder / path.name, path)
    _remove_external_data(path, keep=data_name)
    return path


@contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM first remove the temp entries in flight, then stop the run.

    SIGINT then raises ``KeyboardInterrupt``, SIGTERM ``SystemExit(143)``; the previous handlers are
    restored after the block. Outside the main thread (where Python cannot set handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """An ``OSError`` inside the block (no space, no permission, a file where a folder should be) is a
    one-line :class:`DyconvError`."""
    try:
        yield
    except OSError as exc:
        raise DyconvError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _on_signal(signum: int, frame) -> None:
    for temp in list(_IN_FLIGHT):
        _remove(temp)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _remove(entry: Path) -> None:
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _create(file: Path) -> None:
    """Create the new empty ``file`` with mode ``0o666 & ~umask``."""
    os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _check_parents(path: Path) -> None:
    """Refuse ``path`` when its nearest existing ancestor is a file."""
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        raise DyconvError(f"cannot write {path}: {existing} is a file, not a folder")


def _temp_for(path: Path) -> Path:
    """A new temp entry name beside ``path``: ``.NAME.<pid>.<token>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def _swap_in(folder: Path, path: Path) -> None:
    """Rename ``folder`` onto ``path``; an existing ``path`` goes aside first and is put back if that fails."""
    if not path.exists():
        os.rename(folder, path)
        _fsync(path.parent)
        return
    old = _temp_for(path)
    os.rename(path, old)
    try:
        os.rename(folder, path)
    except BaseException:  # also KeyboardInterrupt/SystemExit from the signal handler
        os.rename(old, path)
        raise
    _IN_FLIGHT.add(old)  # from here on a signal may finish its removal
    _fsync(path.parent)
    _remove(old)
    _IN_FLIGHT.discard(old)


def _publish(temp: Path, path: Path) -> None:
    """Flush ``temp`` to disk, rename it over ``path`` and flush the folder entry."""
    _fsync(temp)
    os.replace(temp, path)
    _fsync(path.parent)


def _fsync(entry: Path) -> None:
    fd = os.open(entry, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Remove temp entries of ``path`` left by processes that no longer run (killed with SIGKILL)."""
    for entry in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = _TEMP.match(entry.name)
        if match and match["name"] == path.name and not _running(int(match["pid"])):
            _remove(entry)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        pass
    return True


def _remove_external_data(path: Path, keep: str | None) -> None:
    """Remove the ``NAME.<token>.data`` files of earlier writes of ``path``, except ``keep``."""
    pattern = re.compile(rf"^{re.escape(path.name)}\.[0-9a-f]{{16}}\.data$")
    for entry in path.parent.glob(f"{glob.escape(path.name)}.*.data"):
        if pattern.match(entry.name) and entry.name != keep:
            entry.unlink(missing_ok=True)
