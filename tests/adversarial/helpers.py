"""Assertions shared by the adversarial suite."""

import hashlib
import os
import stat

from gaugeconv.cli import main


def snapshot(root):
    """Every entry under root, links not followed, special files not opened."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    out[rel] = ("file", hashlib.sha256(f.read()).hexdigest())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode))
    return out


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(capsys, root, argv, match, code=2):
    """Exit code, one line naming the problem, and nothing under root changed at all
    (SRC's hashes, no DST, no hidden debris, nothing else touched)."""
    before = snapshot(root)
    got, out, err = run(capsys, *argv)
    assert got == code, (got, out, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert match in err, err
    assert snapshot(root) == before
    return err
