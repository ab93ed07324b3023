"""Where DST goes, and how it gets there without ever losing a folder.

* Identity is by (st_dev, st_ino), never by path strings: DST must not lie inside SRC and SRC
  not inside DST through symbolic links, bind mounts or any other alias.
* DST is assembled in a hidden folder beside it, ``.NAME.gaugeconv-tmp-PID-TOKEN``, created with
  ``os.mkdir`` (which fails if the name exists) only after every check passed.
* Without ``overwrite`` it is moved into place with ``renameat2(RENAME_NOREPLACE)``: a folder
  that appeared at DST meanwhile (another conversion, another program) wins and this
  conversion fails cleanly. With ``overwrite`` it is swapped with the old DST in one step
  (``RENAME_EXCHANGE``), so DST is always either the old or the new folder, and the old one
  (now under the hidden name) is deleted. Where the file system lacks renameat2 the old DST is
  first renamed to ``.NAME.gaugeconv-old-PID-TOKEN``: that name is the journal.
* Each conversion holds an exclusive ``flock`` on a lock file beside its hidden folders,
  ``.NAME.gaugeconv-lock-PID-TOKEN`` (same PID-TOKEN), from before the hidden folder is made
  until it is gone; the kernel drops the lock when the process dies, however it dies.
  ``sweep`` removes what a killed conversion left, and only that: debris whose lock it can take
  (its writer is provably dead), and, if DST is missing while such an old copy survives, puts
  the old copy back. A lock held by a live conversion, in this PID namespace or another one
  (a container sharing the folder: PIDs say nothing there), keeps its folders; so does debris
  without a lock file (nothing proves it dead: it is reported, never deleted).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .safetensors_io import CheckpointError

__all__ = ["Destination", "destination_path", "resolve_destination", "check_not_nested", "sweep", "claim",
           "release", "place", "FileId", "file_id", "ancestors_ids", "hold_lock"]

FileId = tuple[int, int]
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def file_id(st: os.stat_result) -> FileId:
    return (st.st_dev, st.st_ino)


def ancestors_ids(path: Path) -> list[FileId]:
    """(dev, ino) of an existing folder and of every folder above it (symbolic links resolved)."""
    real = Path(os.path.realpath(path))
    return [file_id(os.stat(p)) for p in (real, *real.parents)]


def _new_token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


@dataclass
class Destination:
    path: Path  # DST with its parent's links resolved
    exists: bool
    missing_parents: list[Path] = field(default_factory=list)  # to create, top-down
    token: str = field(default_factory=_new_token)  # PID-TOKEN shared by this conversion's names
    lock: int | None = None  # the held lock's descriptor, from claim() to release()
    lock_file: Path | None = None  # the lock file this conversion made

    def hidden(self, kind: str) -> Path:
        return self.path.parent / f".{self.path.name}.gaugeconv-{kind}-{self.token}"


def destination_path(dst: str | os.PathLike) -> Path:
    """DST made absolute, its parent's symbolic links resolved (DST itself not followed)."""
    absolute = Path(os.path.abspath(dst))
    if absolute.parent == absolute:
        raise CheckpointError(f"DST {absolute} is the root folder")
    return Path(os.path.realpath(absolute.parent)) / absolute.name


def resolve_destination(dst: str | os.PathLike, overwrite: bool) -> Destination:
    """Check DST's path: its parents are folders (or absent), DST itself absent or a folder."""
    absolute = Path(os.path.abspath(dst))
    path = destination_path(dst)
    parent = path.parent
    missing = []
    probe = parent
    while True:
        try:
            st = os.stat(probe)
        except FileNotFoundError:
            missing.append(probe)
            probe = probe.parent
            continue
        except NotADirectoryError:
            raise CheckpointError(f"DST {absolute}: a parent of it is a file, not a folder") \
                from None
        if not stat.S_ISDIR(st.st_mode):
            raise CheckpointError(f"DST {absolute}: its parent {probe} is a file, not a folder")
        break
    exists = os.path.lexists(path)
    if exists:
        if os.path.islink(path):
            raise CheckpointError(f"DST {absolute} is a symbolic link; give the folder it points to")
        if not path.is_dir():
            raise CheckpointError(f"DST {absolute} exists and is not a folder")
        if not overwrite:
            raise CheckpointError(
                f"DST {absolute} already exists; pass overwrite (--overwrite) to replace it"
            )
    return Destination(path, exists, missing[::-1])


def check_not_nested(src: Path, src_dirs: set[FileId], dest: Destination) -> None:
    """Refuse DST inside SRC, SRC inside DST, and SRC = DST, by device and inode.

    ``src_dirs`` holds every folder reachable in SRC (links followed): what would be read.
    """
    existing = dest.path if dest.exists else (dest.missing_parents[0].parent
                                               if dest.missing_parents else dest.path.parent)
    dst_chain = ancestors_ids(existing)
    if src_dirs & set(dst_chain):
        raise CheckpointError(
            f"DST {dest.path} lies inside SRC {src} (or is it): writing there would change SRC"
        )
    if not dest.exists:
        return
    dst_id = dst_chain[0]
    if dst_id in ancestors_ids(src):
        raise CheckpointError(f"SRC {src} lies inside DST {dest.path}: replacing DST would "
                              "delete SRC")
    src_id = file_id(os.stat(src))
    for folder, dirs, _ in os.walk(dest.path):  # links not followed: rmtree does not follow them
        for d in dirs:
            try:
                if file_id(os.lstat(os.path.join(folder, d))) == src_id:
                    raise CheckpointError(f"SRC {src} lies inside DST {dest.path} (as "
                                          f"{os.path.join(folder, d)}): replacing DST would "
                                          "delete SRC")
            except FileNotFoundError:
                continue


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


_SWEPT = -1


def hold_lock(path: Path) -> int | None:
    """Create the lock file ``path`` and hold an exclusive flock on it; returns its descriptor.

    None where the file system has no locks (the file then stays until ``release``, and
    ``sweep`` never removes this conversion's folders). ``_SWEPT`` if a sweeper took and deleted
    the fresh file first (an orphan lock to it): the caller tries another name.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits out a sweeper that is looking at it
    except OSError as err:
        os.close(fd)
        if err.errno in _NO_LOCKS:
            return None
        os.unlink(path)
        raise
    if _still_named(fd, path):
        return fd
    os.close(fd)
    return _SWEPT


def _still_named(fd: int, path: Path) -> bool:
    try:
        return file_id(os.stat(path)) == file_id(os.fstat(fd))
    except FileNotFoundError:
        return False


def _take_lock(path: Path) -> int | None:
    """The lock of a conversion if nobody holds it (its writer is dead); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # gone meanwhile, or not ours to open: prove nothing
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EWOULDBLOCK: a live conversion holds it; or no locks on this file system
        os.close(fd)
        return None
    if not _still_named(fd, path):  # removed by another sweeper or by its own writer
        os.close(fd)
        return None
    return fd


def _hidden_entries(dst: Path) -> dict[str, dict[str, Path]]:
    """Hidden names beside DST, by PID-TOKEN: {token: {"tmp"|"old"|"lock": path}}."""
    prefix = f".{dst.name}.gaugeconv-"
    try:
        names = os.listdir(dst.parent)
    except OSError:  # no parent yet, or a file
        return {}
    out: dict[str, dict[str, Path]] = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        kind, _, token = name[len(prefix):].partition("-")
        if kind in ("tmp", "old", "lock") and token.split("-")[0].isdigit():
            out.setdefault(token, {})[kind] = dst.parent / name
    return out


def sweep(dst: Path) -> list[str]:
    """Clean up after conversions to DST that were killed; returns what was done (and kept).

    Only what is provably dead goes: the folders of a conversion whose lock this process could
    take. A held lock means a live conversion, whatever its PID says; no lock file at all means
    nothing can be proved, and the folder is kept (and reported).
    """
    notes = []
    for token, found in sorted(_hidden_entries(dst).items()):
        lock = found.pop("lock", None)
        if lock is None:
            for path in found.values():
                notes.append(f"kept {path.name}: it has no lock file, so nothing shows that its "
                             "conversion ended; delete it yourself if no conversion is running")
            continue
        fd = _take_lock(lock)
        if fd is None:
            continue  # a live conversion (in any PID namespace) holds it
        try:
            notes += _remove_debris(dst, found, token)
            if not any(os.path.lexists(p) for p in found.values()):
                os.unlink(lock)
        finally:
            os.close(fd)
    return notes


def _remove_debris(dst: Path, found: dict[str, Path], token: str) -> list[str]:
    notes = []
    old = found.get("old")
    if old is not None and not os.path.lexists(dst):
        os.rename(old, dst)  # the new DST never arrived: the old one comes back
        notes.append(f"restored {dst} from {old.name}, left by a killed conversion")
        old = None
    for path in (p for p in (found.get("tmp"), old) if p is not None):
        shutil.rmtree(path, ignore_errors=True)
        notes.append(f"removed {path.name}, left by a killed conversion ({token})")
    return notes


def claim(dest: Destination) -> tuple[Path, list[Path]]:
    """Create the missing parents, take the lock, create the hidden folder; returns it and the
    parents made. The lock stays held until ``release(dest)``."""
    made = []
    try:
        for p in dest.missing_parents:
            try:
                os.mkdir(p)
                made.append(p)
            except FileExistsError:
                if not p.is_dir():
                    raise CheckpointError(f"DST's parent {p} appeared as a file") from None
        while True:
            lock = hold_lock(dest.hidden("lock"))
            if lock != _SWEPT:
                break
            dest.token = _new_token()
        dest.lock, dest.lock_file = lock, dest.hidden("lock")
        tmp = dest.hidden("tmp")
        os.mkdir(tmp)
    except BaseException:
        release(dest)
        unmake(made)
        raise
    return tmp, made


def release(dest: Destination) -> None:
    """Delete the lock file and drop the lock (once the hidden folders are gone)."""
    fd, path = dest.lock, dest.lock_file
    dest.lock = dest.lock_file = None
    try:
        if path is not None:
            os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        if fd is not None:
            os.close(fd)


def unmake(made: list[Path]) -> None:
    """Remove parents this conversion created, if they are still empty."""
    for p in reversed(made):
        try:
            os.rmdir(p)
        except OSError:
            break


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place(tmp: Path, dest: Destination, overwrite: bool) -> Path | None:
    """Move the finished hidden folder to DST. Returns the old DST's hidden name, to delete."""
    dst = dest.path
    if overwrite and os.path.lexists(dst):
        try:
            _renameat2(tmp, dst, _RENAME_EXCHANGE)  # DST is the old or the new folder, always
            _fsync_dir(dst.parent)
            return tmp
        except OSError as err:
            if err.errno == errno.ENOENT and not os.path.lexists(dst):
                pass  # DST vanished meanwhile: a plain move below
            elif err.errno not in _UNSUPPORTED:
                raise
            else:
                aside = dest.hidden("old")
                os.rename(dst, aside)  # the hidden name is the journal: sweep restores it
                try:
                    _move_new(tmp, dst)
                except BaseException:
                    os.rename(aside, dst)
                    raise
                _fsync_dir(dst.parent)
                return aside
    _move_new(tmp, dst)
    _fsync_dir(dst.parent)
    return None


def _move_new(tmp: Path, dst: Path) -> None:
    try:
        _renameat2(tmp, dst, _RENAME_NOREPLACE)
        return
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise CheckpointError(
                f"DST {dst} appeared while converting (another conversion or program); it was "
                "left as it is, and this conversion discarded"
            ) from None
        if err.errno not in _UNSUPPORTED:
            raise
    if os.path.lexists(dst):  # no renameat2: check, then rename (a narrow race remains)
        raise CheckpointError(f"DST {dst} appeared while converting; it was left as it is")
    os.rename(tmp, dst)
