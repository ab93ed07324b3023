"""config.json: mistyped fields, unknown model types, foreign class names, remote code."""

import json

import pytest

from tests.adversarial.conftest import edit_json
from tests.adversarial.helpers import assert_refused, run, snapshot

PLAIN = ["--to", "mup", "-r", "0.5", "--json"]
GAUGED = ["--to", "rescaling", "--json"]


def _cfg(change):
    return lambda src: edit_json(src / "config.json", change)


def _entry(change):
    return lambda src: edit_json(src / "config.json", lambda c: change(c["gaugeconv"]))


def _text(text):
    def edit(src):
        (src / "config.json").write_bytes(text)

    return edit


def _arch(name):
    return _cfg(lambda c: c.update(architectures=[name]))


PLAIN_CASES = {
    "not-json": (_text(b"{model_type: gpt2"), "not valid JSON"),
    "not-utf8": (_text(b'{"model_type": "\xff"}'), "not UTF-8"),
    "a-list": (_text(b"[]"), "not a JSON object"),
    "deeply-nested": (_text(b"[" * 100000 + b"]" * 100000), "nested too deeply"),
    "no-model-type": (_cfg(lambda c: c.pop("model_type")), "model_type"),
    "int-model-type": (_cfg(lambda c: c.update(model_type=2)), "model_type"),
    "unknown-model-type": (_cfg(lambda c: c.update(model_type="gpt9")), "unknown model_type"),
    "string-width": (_cfg(lambda c: c.update(n_embd="sixty-four")), "config.json"),
    "list-layers": (_cfg(lambda c: c.update(n_layer=[2])), "config.json"),
    "architectures-string": (_cfg(lambda c: c.update(architectures="GPT2LMHeadModel")),
                             "architectures"),
    "arch-AutoModel": (_arch("AutoModel"), "not a transformers model class"),
    "arch-TrainingArguments": (_arch("TrainingArguments"), "not a transformers model class"),
    "arch-pipeline": (_arch("pipeline"), "not a transformers model class"),
    "arch-dunder": (_arch("__class__"), "not a transformers model class"),
    "arch-other-model-type": (_arch("BertModel"), "not a transformers model class"),
    "config-missing": (lambda src: (src / "config.json").unlink(), "has no config.json"),
    "config-a-folder": (lambda src: ((src / "config.json").unlink(),
                                     (src / "config.json").mkdir()), "has no config.json"),
}


@pytest.mark.parametrize("case", sorted(PLAIN_CASES))
def test_bad_config(make_src, tmp_path, capsys, case):
    edit, match = PLAIN_CASES[case]
    src = make_src()
    edit(src)
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", *PLAIN], match)


def _mult(value):
    def change(e):
        e["multipliers"][next(iter(e["multipliers"]))] = value

    return change


GAUGED_CASES = {
    "entry-a-list": (_cfg(lambda c: c.update(gaugeconv=[1])), "not an object"),
    "richness-string": (_entry(lambda e: e.update(richness="half")), "gaugeconv.richness"),
    "richness-bool": (_entry(lambda e: e.update(richness=True)), "gaugeconv.richness"),
    "richness-out-of-range": (_entry(lambda e: e.update(richness=0.7)), "0.7"),
    "gamma-string": (_entry(lambda e: e.update(gamma="1")), "gaugeconv.gamma"),
    "gamma-negative": (_entry(lambda e: e.update(gamma=-1.0)), "gamma"),
    "gauge-unknown": (_entry(lambda e: e.update(gauge="ntk")), "'ntk'"),
    "gauge-int": (_entry(lambda e: e.update(gauge=3)), "gaugeconv.gauge"),
    "multipliers-list": (_entry(lambda e: e.update(multipliers=[1.0])), "gaugeconv.multipliers"),
    "multiplier-string": (_entry(_mult("2")), "gaugeconv.multipliers"),
    "multiplier-zero": (_entry(_mult(0.0)), "gaugeconv.multipliers"),
    "multiplier-disagrees": (_entry(_mult(3.0)), "disagrees with the model"),
    "width-string": (_entry(lambda e: e.update(width="64")), "gaugeconv.width"),
    "width-wrong": (_entry(lambda e: e.update(width=65)), "width 65"),
    "format-version": (_entry(lambda e: e.update(format_version=3)), "format_version"),
    "unknown-field": (_entry(lambda e: e.update(colour="blue")), "unknown gauge config field"),
    "role-overrides-list": (_entry(lambda e: e.update(role_overrides=["x"])),
                            "gaugeconv.role_overrides"),
    "role-unknown": (_entry(lambda e: e.update(role_overrides={"lm_head*": "ruler"})), "ruler"),
}


@pytest.mark.parametrize("case", sorted(GAUGED_CASES))
def test_bad_gauge_entry(make_src, tmp_path, capsys, case):
    edit, match = GAUGED_CASES[case]
    src = make_src("gpt2-mup")
    edit(src)
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", *GAUGED], match)


def test_remote_code_is_never_run(make_src, tmp_path, capsys):
    """auto_map names Python in SRC that would leave a mark: ignored, never imported."""
    src = make_src()
    mark = tmp_path / "pwned"
    code = f"open({str(mark)!r}, 'w').write('ran')\n"
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (src / name).write_text(code)
    edit_json(src / "config.json", lambda c: c.update(auto_map={
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel"}))
    got, out, err = run(capsys, "convert", src, tmp_path / "out", *PLAIN)
    assert got == 0, err
    assert not mark.exists()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["auto_map"]  # kept as data
    got, _, err = run(capsys, "roles", src, "-r", "0.5", "--json")
    assert got == 0 and not mark.exists()


@pytest.mark.parametrize("args,match", [
    (["--to", "ntk", "-r", "0.5"], "'ntk'"),
    (["--to", "mup", "-r", "0.7"], "0.7"),
    (["--to", "mup", "-r", "abc"], "richness must be a number"),
    (["--to", "mup"], "give the richness"),
    (["--to", "mup", "-r", "0.5", "--gamma", "0"], "--gamma"),
    (["--to", "mup", "-r", "0.5", "--gamma", "nan"], "--gamma"),
    (["--to", "mup", "-r", "0.5", "--workers", "0"], "--workers"),
    (["--to", "mup", "-r", "0.5", "--optimizer", "lion"], "lion"),
])
def test_bad_convert_arguments(make_src, tmp_path, capsys, args, match):
    src = make_src()
    before = snapshot(tmp_path)
    got, _, err = run(capsys, "convert", src, tmp_path / "out", *args, "--json") \
        if "abc" not in args else _argparse(capsys, src, tmp_path, args)
    assert got == 2 and match in err and "Traceback" not in err, err
    assert snapshot(tmp_path) == before


def _argparse(capsys, src, tmp_path, args):
    with pytest.raises(SystemExit) as info:
        run(capsys, "convert", src, tmp_path / "out", *args)
    _, err = capsys.readouterr()
    return info.value.code, "", err
