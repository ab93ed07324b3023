"""Lazy package attributes: light imports, and the same objects the eager imports gave."""

import importlib
import json
import subprocess
import sys

import pytest

PACKAGES = ["gaugeconv", "gaugeconv.hf", "gaugeconv.diagnostics", "gaugeconv.importers"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_is_its_module_s_object(package):
    """Even where a name is also a submodule's (gaugeconv.convert, gaugeconv.verify,
    diagnostics.coord_check), and whatever imported that submodule first."""
    pkg = importlib.import_module(package)
    for name, module in pkg._WHERE.items():
        importlib.import_module(module, package)  # the submodule, imported by someone
        assert getattr(pkg, name) is getattr(sys.modules[package + module], name), name
        assert callable(getattr(pkg, name)) or not name.islower(), name
    assert sorted(pkg.__all__) == sorted(pkg._WHERE) and set(pkg.__all__) <= set(dir(pkg))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018


def test_light_commands_import_neither_torch_nor_transformers():
    code = ("import sys, gaugeconv, gaugeconv.cli, gaugeconv.checkpoint, gaugeconv.hf.config; "
            "gaugeconv.cli.build_parser(); gaugeconv.Richness(0.5); "
            "import json; print(json.dumps(sorted(m for m in ('torch', 'transformers', "
            "'matplotlib', 'sklearn', 'tqdm', 'scipy') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
