"""Data loss: SRC and DST by device and inode, DST claimed atomically, overwrite, debris."""

import json
import os
import subprocess

import pytest

import gaugeconv.checkpoint.folder as folder_mod
from gaugeconv import GaugeError
from tests.adversarial.helpers import assert_refused, run, snapshot


def argv(src, dst, *extra):
    return ["convert", src, dst, "--to", "mup", "-r", "0.5", "--json", *extra]


def _nested(tmp_path, src, how):
    """(DST, extra flags, expected message) for one way of nesting DST and SRC."""
    if how == "same":
        return src, ["--overwrite"], "lies inside SRC"
    if how == "inside":
        return src / "sub" / "out", [], "lies inside SRC"
    if how == "inside-link":  # a link beside SRC that points into it
        os.symlink(src, tmp_path / "alias")
        return tmp_path / "alias" / "out", [], "lies inside SRC"
    if how == "same-link":
        os.symlink(src, tmp_path / "alias")
        return tmp_path / "alias", ["--overwrite"], "is a symbolic link"
    if how == "src-inside-dst":
        return tmp_path, ["--overwrite"], "lies inside DST"
    if how == "src-inside-dst-link":  # DST named through a link to its parent
        os.symlink(src, tmp_path / "alias")
        return tmp_path / "alias" / "..", ["--overwrite"], "lies inside DST"
    if how == "src-parent-dots":
        return src / "..", ["--overwrite"], "lies inside DST"
    if how == "inside-via-src-link":  # SRC holds a link to DST's parent: reading SRC reads DST
        (tmp_path / "elsewhere").mkdir()
        os.symlink(tmp_path / "elsewhere", src / "linked")
        return tmp_path / "elsewhere" / "out", [], "lies inside SRC"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["same", "inside", "inside-link", "same-link", "src-inside-dst",
                                 "src-inside-dst-link", "src-parent-dots", "inside-via-src-link"])
def test_nested_src_and_dst_are_refused(make_src, tmp_path, capsys, how):
    src = make_src()
    (src / "sub").mkdir()
    dst, extra, match = _nested(tmp_path, src, how)
    assert_refused(capsys, tmp_path, argv(src, dst, *extra), match)
    assert (src / "model.safetensors").is_file()


def _mount(*args):
    return subprocess.run(["mount", *map(str, args)], capture_output=True).returncode == 0


def test_bind_mount_alias_of_src_is_refused(make_src, tmp_path, capsys):
    src = make_src()
    alias = tmp_path / "mnt"
    alias.mkdir()
    if not _mount("--bind", src, alias):
        pytest.skip("bind mounts need root (CAP_SYS_ADMIN)")
    try:
        assert_refused(capsys, tmp_path, argv(src, alias / "out"), "lies inside SRC")
        assert_refused(capsys, tmp_path, argv(alias, src / "x"), "lies inside SRC")
        assert_refused(capsys, tmp_path, argv(alias, src, "--overwrite"), "lies inside SRC")
    finally:
        subprocess.run(["umount", str(alias)], check=True)


@pytest.mark.parametrize("kind", ["file", "link", "nonempty", "empty"])
def test_existing_dst_is_refused_without_overwrite(make_src, tmp_path, capsys, kind):
    src = make_src()
    dst = tmp_path / "dst"
    if kind == "file":
        dst.write_text("mine")
        match = "not a folder"
    elif kind == "link":
        os.symlink(src, dst)
        match = "symbolic link"
    else:
        dst.mkdir()
        if kind == "nonempty":
            (dst / "keep.txt").write_text("mine")
        match = "already exists"
    assert_refused(capsys, tmp_path, argv(src, dst), match)


@pytest.mark.parametrize("depth", [1, 2])
def test_dst_whose_parent_is_a_file(make_src, tmp_path, capsys, depth):
    src = make_src()
    (tmp_path / "afile").write_text("x")
    dst = tmp_path / "afile" / "out" if depth == 1 else tmp_path / "afile" / "a" / "out"
    assert_refused(capsys, tmp_path, argv(src, dst), "a file, not a folder")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_src_not_a_folder(tmp_path, capsys, kind):
    src = tmp_path / "src"
    if kind == "file":
        src.write_text("x")
    assert_refused(capsys, tmp_path, argv(src, tmp_path / "out"),
                   "No such file" if kind == "missing" else "not a folder")


def test_overwrite_replaces_and_leaves_no_debris(make_src, tmp_path, capsys):
    src = make_src()
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    code, out, _ = run(capsys, *argv(src, dst, "--overwrite"))
    assert code == 0 and json.loads(out)["lossless"]
    assert not (dst / "old.txt").exists() and (dst / "model.safetensors").is_file()
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_missing_parents_are_created(make_src, tmp_path, capsys):
    src = make_src()
    code, _, _ = run(capsys, *argv(src, tmp_path / "a" / "b" / "out"))
    assert code == 0 and (tmp_path / "a" / "b" / "out" / "config.json").is_file()


def test_failure_removes_the_parents_it_created(make_src, tmp_path, capsys):
    src = make_src("gpt2-f16-mup")
    from safetensors.torch import load_file, save_file

    t = load_file(src / "model.safetensors")
    t["transformer.h.0.mlp.c_fc.weight"].view(-1)[0] = 2.0 ** -24  # underflows when divided
    save_file(t, src / "model.safetensors", metadata={"format": "pt"})
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "a" / "b" / "out", "--to", "stp",
                                      "--json"], "underflow")


def test_a_folder_that_appears_at_dst_during_the_conversion_wins(make_src, tmp_path, capsys,
                                                                 monkeypatch):
    src = make_src()
    dst = tmp_path / "dst"
    real = folder_mod.run_stream

    def racing(*a, **kw):  # another program creates DST while the tensors are written
        out = real(*a, **kw)
        dst.mkdir()
        (dst / "theirs.txt").write_text("theirs")
        return out

    monkeypatch.setattr(folder_mod, "run_stream", racing)
    code, _, err = run(capsys, *argv(src, dst))
    assert code == 2 and "appeared while converting" in err and err.count("\n") == 1
    assert os.listdir(dst) == ["theirs.txt"]
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_a_killed_conversion_s_debris_is_swept(make_src, tmp_path, capsys):
    """What a SIGKILLed conversion leaves: its folders and its lock file, the lock free (the
    kernel dropped it with the process). Its PID is any: locks, not PIDs, decide."""
    src = make_src()
    token = f"{os.getpid()}-abcd1234"  # even a live PID: nobody holds the lock
    for kind in ("tmp", "old"):
        d = tmp_path / f".dst.gaugeconv-{kind}-{token}"
        d.mkdir()
        (d / "half.safetensors").write_bytes(b"x" * 10)
    (tmp_path / f".dst.gaugeconv-lock-{token}").touch()
    (tmp_path / "dst").mkdir()  # the new DST had arrived: the old copy is debris
    code, out, _ = run(capsys, *argv(src, tmp_path / "dst", "--overwrite"))
    report = json.loads(out)
    assert code == 0 and len(report["notes"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_dst_lost_between_two_renames_is_restored(make_src, tmp_path, capsys):
    """A SIGKILL between moving the old DST aside and the new one in: the next run restores."""
    src = make_src()
    aside = tmp_path / f".dst.gaugeconv-old-{2 ** 22 + 7}-00000000"
    aside.mkdir()
    (tmp_path / f".dst.gaugeconv-lock-{2 ** 22 + 7}-00000000").touch()  # its lock, free
    (aside / "precious.txt").write_text("old DST")
    before = snapshot(aside)
    code, _, err = run(capsys, *argv(src, tmp_path / "dst"))
    assert code == 2 and "already exists" in err  # restored, so now refused without --overwrite
    assert snapshot(tmp_path / "dst") == before
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_a_live_conversion_s_hidden_folder_is_left_alone(make_src, tmp_path, capsys):
    """Its lock is held (here by this process, through another open file: flock locks conflict
    between open files, in one process as in two). test_locks.py has the same across processes
    and PID namespaces."""
    from gaugeconv.checkpoint.placement import hold_lock

    src = make_src()
    live = tmp_path / f".dst.gaugeconv-tmp-{os.getpid()}-00000000"
    lock = hold_lock(tmp_path / f".dst.gaugeconv-lock-{os.getpid()}-00000000")
    try:
        live.mkdir()
        code, _, _ = run(capsys, *argv(src, tmp_path / "dst"))
        assert code == 0 and live.is_dir()
    finally:
        os.close(lock)


def test_concurrent_conversions_to_one_dst_one_wins(bases, tmp_path):
    """Four conversions race to one DST: exactly one succeeds; DST is one whole conversion."""
    import threading

    from gaugeconv.checkpoint import convert_checkpoint

    dst, results = tmp_path / "dst", []
    gate = threading.Barrier(4)

    def go():
        gate.wait()
        try:
            convert_checkpoint(bases / "gpt2", dst, "mup", richness=0.5, progress=False,
                               weights="stored")  # as gpt2-mup was made
            results.append("ok")
        except GaugeError as err:
            results.append(str(err))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1, results
    assert all("already exists" in r or "appeared while converting" in r
               for r in results if r != "ok"), results
    assert snapshot(dst) == snapshot(bases / "gpt2-mup")
    assert os.listdir(tmp_path) == ["dst"]


@pytest.mark.slow
def test_subprocess_errors_are_one_line(bases, tmp_path):
    """The real command in its own process: a bad header is one line on stderr, exit 2."""
    import shutil
    import sys

    from tests.hf.test_trainer import ROOT

    src = tmp_path / "src"
    shutil.copytree(bases / "gpt2", src)
    data = bytearray((src / "model.safetensors").read_bytes())
    data[8:9] = b"["  # the header is no longer a JSON object
    (src / "model.safetensors").write_bytes(bytes(data))
    before = snapshot(tmp_path)
    p = subprocess.run([sys.executable, "-m", "gaugeconv", "convert", str(src),
                        str(tmp_path / "out"), "--to", "mup", "-r", "0.5"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "model.safetensors: the header is not valid JSON" in p.stderr, p.stderr
    assert snapshot(tmp_path) == before


def _no_renameat2(*args):
    import errno

    raise OSError(errno.ENOSYS, "renameat2 is not available")


def test_overwrite_without_renameat2_moves_the_old_dst_aside(make_src, tmp_path, capsys,
                                                             monkeypatch):
    """File systems without renameat2: the old DST goes to a hidden 'old' name (the journal),
    the new one comes in, the old one is deleted; nothing is left behind."""
    import gaugeconv.checkpoint.placement as placement

    monkeypatch.setattr(placement, "_renameat2", _no_renameat2)
    src = make_src()
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "old.txt").write_text("old")
    code, _, err = run(capsys, *argv(src, tmp_path / "dst", "--overwrite"))
    assert code == 0, err
    assert (tmp_path / "dst" / "model.safetensors").is_file()
    assert not (tmp_path / "dst" / "old.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]
    code, _, err = run(capsys, *argv(src, tmp_path / "dst"))  # and no overwrite without the flag
    assert code == 2 and "already exists" in err


def test_overwrite_that_fails_after_moving_aside_puts_the_old_dst_back(make_src, tmp_path, capsys,
                                                                       monkeypatch):
    import gaugeconv.checkpoint.placement as placement

    def fail(tmp, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(placement, "_renameat2", _no_renameat2)
    monkeypatch.setattr(placement, "_move_new", fail)
    src = make_src()
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "old.txt").write_text("old")
    before = snapshot(tmp_path)
    code, _, err = run(capsys, *argv(src, tmp_path / "dst", "--overwrite"))
    assert code == 2 and "No space left" in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before
