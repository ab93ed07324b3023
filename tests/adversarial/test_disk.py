"""A full disk, a read-only one, and Ctrl-C: the real error in one line, nothing left behind."""

import _thread
import subprocess

import pytest

import gaugeconv.checkpoint.folder as folder_mod
from tests.adversarial.helpers import assert_refused, run, snapshot


def _mount(*args):
    return subprocess.run(["mount", *map(str, args)], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB file system: the 430 KB model cannot fit (ENOSPC from the kernel)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def read_only(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", mnt):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("where", ["dst", "parent-to-create"])
def test_full_disk_gives_enospc_and_no_debris(make_src, tmp_path, capsys, small_disk, where):
    src = make_src()
    dst = small_disk / "out" if where == "dst" else small_disk / "a" / "out"
    err = assert_refused(capsys, tmp_path, ["convert", src, dst, "--to", "mup", "-r", "0.5",
                                            "--json"], "No space left on device")
    assert "BufferError" not in err


def test_read_only_disk(make_src, tmp_path, capsys, read_only):
    src = make_src()
    assert_refused(capsys, tmp_path, ["convert", src, read_only / "out", "--to", "mup", "-r",
                                      "0.5", "--json"], "Read-only file system")


def test_ctrl_c_while_writing(make_src, tmp_path, capsys, monkeypatch):
    """KeyboardInterrupt reaches the main thread while the workers write (as SIGINT does):
    exit 130, one line, the hidden folder removed, SRC untouched."""
    src = make_src("gpt2-sharded")
    real = folder_mod.run_stream

    def interrupted(files, workers, progress, allow_lossy):
        fired = []

        def tick(n):
            if not fired:
                fired.append(n)
                _thread.interrupt_main()  # what the default SIGINT handler does

        return real(files, workers, tick, allow_lossy)

    monkeypatch.setattr(folder_mod, "run_stream", interrupted)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "convert", src, tmp_path / "out", "--to", "mup", "-r", "0.5",
                       "--json")
    assert code == 130 and err.count("\n") == 1 and "interrupted" in err, err
    assert "BufferError" not in err and snapshot(tmp_path) == before
