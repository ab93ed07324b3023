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
* ``sweep`` removes what a killed conversion left (hidden folders of processes that no longer
  exist) and, if DST is missing while an old copy survives, puts the old copy back.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .safetensors_io import CheckpointError

__all__ = ["Destination", "destination_path", "resolve_destination", "check_not_nested", "sweep", "claim",
           "place", "FileId", "file_id", "ancestors_ids"]

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


@dataclass
class Destination:
    path: Path  # DST with its parent's links resolved
    exists: bool
    missing_parents: list[Path] = field(default_factory=list)  # to create, top-down

    def hidden(self, kind: str) -> Path:
        return self.path.parent / f".{self.path.name}.gaugeconv-{kind}-{os.getpid()}-" \
                                  f"{secrets.token_hex(4)}"


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _debris(dst: Path) -> Iterable[tuple[Path, str, int]]:
    prefix = f".{dst.name}.gaugeconv-"
    try:
        names = os.listdir(dst.parent)
    except OSError:  # no parent yet, or a file
        return []
    out = []
    for name in names:
        if not name.startswith(prefix):
            continue
        kind, _, rest = name[len(prefix):].partition("-")
        pid = rest.split("-")[0]
        if kind in ("tmp", "old") and pid.isdigit():
            out.append((dst.parent / name, kind, int(pid)))
    return out


def sweep(dst: Path) -> list[str]:
    """Clean up after conversions to DST that were killed; returns what was done."""
    notes = []
    for path, kind, pid in sorted(_debris(dst), key=lambda d: d[1]):  # "old" before "tmp"
        if pid == os.getpid() or _alive(pid):
            continue
        if kind == "old" and not os.path.lexists(dst):
            os.rename(path, dst)  # the new DST never arrived: the old one comes back
            notes.append(f"restored {dst} from {path.name}, left by a killed conversion")
            continue
        shutil.rmtree(path, ignore_errors=True)
        notes.append(f"removed {path.name}, left by a killed conversion (pid {pid})")
    return notes


def claim(dest: Destination) -> tuple[Path, list[Path]]:
    """Create the missing parents and the hidden folder; returns it and the parents made."""
    made = []
    try:
        for p in dest.missing_parents:
            try:
                os.mkdir(p)
                made.append(p)
            except FileExistsError:
                if not p.is_dir():
                    raise CheckpointError(f"DST's parent {p} appeared as a file") from None
        tmp = dest.hidden("tmp")
        os.mkdir(tmp)
    except BaseException:
        unmake(made)
        raise
    return tmp, made


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
