"""The streaming engine: output files written by a pool of threads at disk speed.

Each output file is created (O_EXCL), gets its header, and is filled by independent tasks,
each a contiguous byte range: unscaled tensors are copied by the kernel
(``os.copy_file_range``, no bytes through Python; plain read/write where unsupported), scaled
ones are read in chunks of 2**20 entries into per-thread buffers, scaled by numpy (which
releases the GIL; see scaling.py) and written with ``os.pwrite`` at their offset. Files are
fsynced as soon as their last task is done, so the write-back of one overlaps the work on the
next. Memory is a few chunk buffers per thread, whatever the model's size. Nothing here is
memory-mapped, so no exported buffer can hide the real error (ENOSPC, KeyboardInterrupt...).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .safetensors_io import DTYPES, CheckpointError
from .scaling import scale_chunk

__all__ = ["Source", "FileSource", "ArraySource", "Task", "OutFile", "TensorStats", "run_stream"]

CHUNK = 1 << 20  # entries per scaled chunk
RAW_PIECE = 64 << 20  # bytes per raw-copy task
SCALED_PIECE = 16 << 20  # bytes per scaled task


class Source:
    """Where a task's input bytes come from."""

    name: str

    def read(self, offset: int, n: int, buf: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FileSource(Source):
    """A SRC file, read with pread (thread-safe on one descriptor)."""

    def __init__(self, path: Path) -> None:
        self.path, self.name, self.fd = path, path.name, -1

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, offset: int, n: int, buf: np.ndarray) -> np.ndarray:
        view = memoryview(buf)[:n]
        try:
            done = 0
            while done < n:
                got = os.preadv(self.fd, [view[done:]], offset + done)
                if got == 0:
                    raise CheckpointError(f"{self.name} shrank while it was being converted")
                done += got
        finally:
            view.release()
        return buf[:n]


class ArraySource(Source):
    """Bytes already in memory (a tensor loaded from pytorch_model.bin)."""

    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name, self.data = name, data

    def read(self, offset: int, n: int, buf: np.ndarray) -> np.ndarray:
        return self.data[offset:offset + n]


@dataclass
class Task:
    source: Source
    src_offset: int
    dst_offset: int
    nbytes: int
    tensor: str = ""
    dtype: str | None = None  # None: copied as raw bytes
    factor: float = 1.0


@dataclass
class OutFile:
    path: Path
    header: bytes
    size: int
    tasks: list[Task] = field(default_factory=list)


@dataclass
class TensorStats:
    overflow: int = 0
    underflow: int = 0
    roundtrip: float = 0.0
    amax: float = 0.0


def split(task: Task) -> list[Task]:
    """Pieces of a task that threads can do independently (whole entries for scaled ones)."""
    piece = RAW_PIECE if task.dtype is None else SCALED_PIECE - SCALED_PIECE % DTYPES[task.dtype]
    out = []
    for a in range(0, task.nbytes, piece):
        n = min(piece, task.nbytes - a)
        out.append(Task(task.source, task.src_offset + a, task.dst_offset + a, n, task.tensor,
                        task.dtype, task.factor))
    return out


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data).cast("B")
    try:
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
    finally:
        view.release()


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.raw = np.empty(CHUNK * 8, np.uint8)
        self.out = np.empty(CHUNK * 8, np.uint8)
        self.work = np.empty(CHUNK * 8, np.uint8)


def _copy_raw(task: Task, fd: int, bufs: _Buffers, stop: threading.Event, progress) -> None:
    src, a, b, n = task.source, task.src_offset, task.dst_offset, task.nbytes
    if isinstance(src, FileSource):
        try:
            while n > 0:
                if stop.is_set():
                    return
                got = os.copy_file_range(src.fd, fd, min(n, 16 << 20), a, b)
                if got == 0:
                    raise CheckpointError(f"{src.name} shrank while it was being converted")
                a, b, n = a + got, b + got, n - got
                progress(got)
            return
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                 errno.EBADF, errno.EPERM):
                raise
    step = CHUNK * 8
    while n > 0 and not stop.is_set():
        k = min(step, n)
        _pwrite_all(fd, src.read(a, k, bufs.raw), b)
        a, b, n = a + k, b + k, n - k
        progress(k)


def _scale_task(task: Task, fd: int, bufs: _Buffers, stop: threading.Event, progress,
                stats: TensorStats, lock: threading.Lock, allow_lossy: bool) -> None:
    width = DTYPES[task.dtype]
    step = CHUNK * width
    for a in range(0, task.nbytes, step):
        if stop.is_set():
            return
        k = min(step, task.nbytes - a)
        raw = task.source.read(task.src_offset + a, k, bufs.raw)
        res = scale_chunk(raw, task.dtype, task.factor, bufs.out[:k], bufs.work)
        with lock:
            stats.overflow += res.overflow
            stats.underflow += res.underflow
            stats.roundtrip = max(stats.roundtrip, res.roundtrip)
            stats.amax = max(stats.amax, res.amax)
            lossy = stats.overflow + stats.underflow
        if lossy and not allow_lossy:
            raise CheckpointError(_lossy_message(task, stats))
        _pwrite_all(fd, bufs.out[:k], task.dst_offset + a)
        progress(k)


def _lossy_message(task: Task, stats: TensorStats) -> str:
    what = []
    if stats.overflow:
        what.append(f"{stats.overflow} entr{'y' if stats.overflow == 1 else 'ies'} would "
                    "overflow to inf")
    if stats.underflow:
        what.append(f"{stats.underflow} entr{'y' if stats.underflow == 1 else 'ies'} would "
                    "underflow to zero or a subnormal")
    return (f"tensor {task.tensor!r} ({task.dtype}) scaled by {task.factor:.6g}: "
            f"{' and '.join(what)}; nothing was written (--allow-lossy accepts the loss)")


def run_stream(
    files: list[OutFile],
    workers: int,
    progress: Callable[[int], None] = lambda n: None,
    allow_lossy: bool = False,
) -> dict[str, TensorStats]:
    """Write every output file; returns per scaled tensor its precision statistics."""
    sources = {id(t.source): t.source for f in files for t in f.tasks}
    stats: dict[str, TensorStats] = {}
    lock, stop = threading.Lock(), threading.Event()
    bufs = _Buffers()
    fds: dict[int, int] = {}
    remaining: dict[int, int] = {}
    pieces: list[tuple[int, Task]] = []
    try:
        for s in sources.values():
            if isinstance(s, FileSource):
                s.open()
        for i, f in enumerate(files):
            fds[i] = os.open(f.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            _pwrite_all(fds[i], np.frombuffer(f.header, np.uint8), 0)
            os.ftruncate(fds[i], f.size)
            progress(len(f.header))
            mine = [p for t in f.tasks for p in split(t)]
            remaining[i] = len(mine)
            pieces += [(i, p) for p in mine]
            for t in f.tasks:
                if t.dtype is not None:
                    stats.setdefault(t.tensor, TensorStats())
        # file by file, in order: a file is finished (and fsynced) early, and its write-back
        # overlaps the work on the next ones

        def safe_progress(n: int) -> None:
            with lock:
                progress(n)

        def do(i: int, task: Task) -> None:
            if stop.is_set():
                return
            if task.dtype is None:
                _copy_raw(task, fds[i], bufs, stop, safe_progress)
            else:
                _scale_task(task, fds[i], bufs, stop, safe_progress, stats[task.tensor], lock,
                            allow_lossy)
            with lock:
                remaining[i] -= 1
                last = remaining[i] == 0
            if last and not stop.is_set():
                os.fsync(fds[i])

        for i, n in remaining.items():
            if n == 0:
                os.fsync(fds[i])
        pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(pieces) or 1)))
        try:
            futures = [pool.submit(do, i, t) for i, t in pieces]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    raise fut.exception()
        finally:
            stop.set()  # on any error (or KeyboardInterrupt), the other threads stop too
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        for fd in fds.values():
            os.close(fd)
        for s in sources.values():
            if isinstance(s, FileSource):
                s.close()
    return stats
