"""Launch a script on two CPU ranks with torchrun, with a free port and a hard deadline.

Every multi-process test goes through ``run_ranks``: the port is picked at run time (no fixed
port shared by concurrent runs); when the deadline passes, torchrun and every process below it
are killed (torchrun starts each rank in a session of its own, so they are found by parentage,
not by process group: a hung rank cannot outlive the test); and a failure message carries what
every rank printed, prefixed with its rank by torchrun's ``--tee``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil  # accelerate's dependency

ROOT = Path(__file__).resolve().parents[2]
# Far above a normal run (about 10-40 s on 2 busy cores), far below pytest's patience: the
# ranks' own process group timeout (PG_TIMEOUT_S in the scripts) fires first on a hang.
DEADLINE_S = 240


def free_port() -> int:
    """A TCP port that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(script: str | Path, *args: object, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), "--tee", "3", str(script), *map(str, args)]


def run_ranks(cmd: list[str], timeout: float = DEADLINE_S) -> subprocess.CompletedProcess:
    """Run cmd (torchrun or a single process) to completion or kill its whole process group.

    Raises AssertionError with the exit code and the output of every rank unless it exits 0.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
        verdict = f"exit code {proc.returncode}"
    except BaseException as exc:
        _kill_tree(proc)
        out, err = proc.communicate()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        verdict = f"killed after the {timeout:.0f} s deadline (a rank hung)"
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[1:6])} ...: {verdict}\n--- stdout (all ranks) ---\n"
                             f"{out[-6000:]}\n--- stderr (all ranks) ---\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL proc and every process started below it (the ranks)."""
    try:
        top = psutil.Process(proc.pid)
        tree = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:  # torchrun is gone already (and reaped): nothing to find
        return
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree[1:], timeout=10)
