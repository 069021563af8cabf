"""Safe file handling shared by training and write-back: private temporary files, atomic replaces,
per-target locks, change detection, signal handling and destination checks.

Torch-, h5py- and pynwb-free so every layer may use it (like `errors`). A run directory and a
user's NWB file are treated as places where someone else may also write: temporary files are
created exclusively with unpredictable names (never following a planted link), a target is
locked for the whole run, and a file that changed since it was read is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import NwbLfadsEmgError, WriteBackError

PARTIAL_TAG = "nwb-lfads-emg-partial"  # temporary copies of a user's file, removed by the next run on it
LOCK_TAG = "nwb-lfads-emg.lock"
TEMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".tmp.nwb"  # HDF5/pynwb expect the .nwb extension on the copy they write


# ---------------------------------------------------------------------------- temporary files
def temp_beside(target: str | Path, tag: str = "tmp", suffix: str = TEMP_SUFFIX) -> tuple[int, Path]:
    """Create a new file beside `target` (O_EXCL, unpredictable name, mode 0600); returns (fd, path)."""
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{tag}-", suffix=suffix, dir=target.parent)
    return fd, Path(name)


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write bytes to a private temporary file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def partial_files(target: str | Path) -> list[Path]:
    """Temporary copies of `target` left by a run that was killed (named `.<name>.nwb-lfads-emg-partial-*`)."""
    target = Path(target)
    prefix = f".{target.name}.{PARTIAL_TAG}-"
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return sorted(target.parent / n for n in names if n.startswith(prefix) and n.endswith(PARTIAL_SUFFIX))


def remove_stale_partials(target: str | Path) -> list[Path]:
    """Remove the temporary copies a killed run left beside `target` (call while holding its lock)."""
    removed = []
    for path in partial_files(target):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def default_mode() -> int:
    """Permission bits of a new regular file under the current umask (0666 & ~umask)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


_UMASK_LOCK = threading.Lock()


def copy_permissions(path: Path, like: Path | None) -> None:
    """Give `path` the mode (and owner/group where permitted) of `like`, or the umask default if None."""
    if like is None:
        os.chmod(path, default_mode())
        return
    st = os.stat(like)
    with contextlib.suppress(OSError):  # only root may give a file away; a group change may be allowed
        if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.chown(path, st.st_uid, st.st_gid)
            except PermissionError:
                os.chown(path, -1, st.st_gid)
    os.chmod(path, stat.S_IMODE(st.st_mode))


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry change (a rename) to disk where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------- change detection
@dataclass(frozen=True)
class FileStamp:
    """Identity and version of a file when it was read: device, inode, size, modification time."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> FileStamp:
        """The stamp of the file at `path` now (follows links)."""
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def refuse_if_changed(path: Path, stamp: FileStamp | None) -> None:
    """Raise WriteBackError when `path` is no longer the file (or version) recorded in `stamp`."""
    if stamp is None:
        return
    try:
        now = FileStamp.of(path)
    except OSError:
        now = None
    if now != stamp:
        raise WriteBackError(
            f"{path}: the file changed on disk since it was read (another program wrote, moved or replaced it); "
            "nothing was written; run again on the new version"
        )


# ---------------------------------------------------------------------------- locks
_HELD: dict[str, list] = {}  # resolved target -> [fd, lock path, depth] (re-entrant within a process)
_HELD_LOCK = threading.Lock()


def lock_path(target: str | Path) -> Path:
    """The advisory lock file of a target: `.<name>.nwb-lfads-emg.lock` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.{LOCK_TAG}"


@contextlib.contextmanager
def target_lock(target: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `target` (re-entrant); a second run fails at once in one line."""
    target = Path(os.path.realpath(target))
    key = str(target)
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:
            held[2] += 1
    if held is None:
        fd, path = _acquire(target)
        with _HELD_LOCK:
            _HELD[key] = [fd, path, 1]
    try:
        yield
    finally:
        with _HELD_LOCK:
            entry = _HELD[key]
            entry[2] -= 1
            done = entry[2] == 0
            if done:
                del _HELD[key]
        if done:
            with contextlib.suppress(OSError):
                os.unlink(entry[1])
            os.close(entry[0])


def _acquire(target: Path) -> tuple[int, Path]:
    path = lock_path(target)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(20):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise WriteBackError(f"{target}: cannot create the lock file {path.name} beside it "
                                 f"({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise WriteBackError(
                f"{target}: another nwb-lfads-emg run is writing this file (lock {path.name} is held); "
                "wait for it to finish, or write elsewhere with --out"
            ) from None
        try:  # the previous holder may have removed the lock file after we opened it: take the new one
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if same:
            return fd, path
        os.close(fd)
    raise WriteBackError(f"{target}: could not take the lock {path.name} (it keeps being replaced)")


# ---------------------------------------------------------------------------- signals
class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM or SIGHUP arrives, so clean-up runs as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into `Interrupted` (and ignore SIGXFSZ so a size limit is an error, not a
    kill) while the block runs; a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = {signal.SIGTERM: _raise_interrupted, signal.SIGHUP: _raise_interrupted}
    if hasattr(signal, "SIGXFSZ"):
        wanted[signal.SIGXFSZ] = signal.SIG_IGN
    previous = {}
    for signum, handler in wanted.items():
        current = signal.getsignal(signum)
        if current in (signal.SIG_DFL, None) or (signum == signal.SIGXFSZ and current == signal.SIG_IGN):
            previous[signum] = current
            signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------- destination checks
def nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def check_output_dir(path: str | Path, flag: str) -> None:
    """Refuse (one line naming `flag`) an output folder that is a file or cannot be created/written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NwbLfadsEmgError(f"{flag} {path}: is a file, not a folder; give a folder name")
    base = nearest_existing(path)
    if not base.is_dir():
        raise NwbLfadsEmgError(f"{flag} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise NwbLfadsEmgError(f"{flag} {path}: the folder {base} is not writable")


def check_output_file(path: str | Path, flag: str, overwrite: bool) -> None:
    """Refuse (one line naming `flag`) an output file that cannot be created where asked."""
    path = Path(path)
    if path.is_dir():
        raise WriteBackError(f"{flag} {path}: is a folder; give the name of the NWB file to write")
    if os.path.lexists(path) and not overwrite:
        raise WriteBackError(f"{path}: output file exists; pass --overwrite (overwrite=True) to replace it")
    if path.exists():
        check_writable_file(Path(os.path.realpath(path)), flag)
    base = nearest_existing(Path(os.path.realpath(path)).parent)
    if not base.is_dir():
        raise WriteBackError(f"{flag} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise WriteBackError(f"{flag} {path}: the folder {base} is not writable")


def check_writable_file(path: Path, flag: str) -> None:
    """Refuse a file its permissions mark read-only (even for root), or that this user may not write."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise WriteBackError(f"{flag} {path}: not a regular file")
    if not st.st_mode & 0o222 or not os.access(path, os.W_OK):
        raise WriteBackError(
            f"{path}: the file is read-only (mode {stat.S_IMODE(st.st_mode):04o}); nothing was written; "
            f"make it writable (chmod u+w) or write a new file with --out"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise WriteBackError(f"{flag} {path}: its folder {path.parent} is not writable (the temporary copy goes "
                             "there); write a new file with --out")


def check_free_space(directory: Path, needed: int, flag: str, what: str) -> None:
    """Refuse when the file system of `directory` has less than `needed` bytes free."""
    try:
        free = shutil.disk_usage(nearest_existing(directory)).free
    except OSError:
        return
    if free < needed:
        raise WriteBackError(
            f"{flag} {directory}: only {free / 1e6:.1f} MB free, {what} needs about {needed / 1e6:.1f} MB; "
            "free some space or write elsewhere"
        )


_SPACE_TEXT = {
    errno.ENOSPC: "no space left on device",
    errno.EFBIG: "file too large (the file size limit, `ulimit -f`, was reached)",
    errno.EDQUOT: "disk quota exceeded",
}


def is_no_space(exc: BaseException | None) -> str | None:
    """What ran out (disk space, size limit, quota) when `exc`, its cause or its text says so, else None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in _SPACE_TEXT:
            return _SPACE_TEXT[exc.errno]
        text = str(exc)
        for code in _SPACE_TEXT:
            if os.strerror(code) in text:
                return _SPACE_TEXT[code]
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
