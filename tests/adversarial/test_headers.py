"""Malformed safetensors headers and indexes: one line naming file and field, nothing written."""

import json
import struct

import pytest

from tests.adversarial.helpers import assert_refused

FILE = "model.safetensors"
W = "transformer.h.0.mlp.c_fc.weight"


def _split(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header_bytes, body):
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + body)


def _header_edit(change):
    def edit(path):
        header, body = _split(path)
        change(header)
        _write(path, json.dumps(header).encode(), body)

    return edit


def _raw(make):
    def edit(path):
        header, body = _split(path)
        _write(path, make(header), body)

    return edit


def _set(field, value, name=W):
    def change(h):
        h[name][field] = value

    return change


def _deep(h):
    return b'{"a":' * 100000 + b"1" + b"}" * 100000


HEADERS = {
    "float-offsets": (_header_edit(lambda h: h[W].update(
        data_offsets=[float(x) for x in h[W]["data_offsets"]])), "data_offsets"),
    "string-offsets": (_header_edit(lambda h: h[W].update(
        data_offsets=[str(x) for x in h[W]["data_offsets"]])), "data_offsets"),
    "one-offset": (_header_edit(lambda h: h[W].update(data_offsets=h[W]["data_offsets"][:1])),
                   "data_offsets"),
    "negative-offset": (_header_edit(lambda h: h[W].update(data_offsets=[-4, 0])), "data_offsets"),
    "string-shape": (_header_edit(_set("shape", "64,256")), "shape"),
    "string-dims": (_header_edit(lambda h: h[W].update(shape=[str(d) for d in h[W]["shape"]])),
                    "shape"),
    "float-dims": (_header_edit(lambda h: h[W].update(shape=[float(d) for d in h[W]["shape"]])),
                   "shape"),
    "bool-dims": (_header_edit(_set("shape", [True, True])), "shape"),
    "negative-dim": (_header_edit(_set("shape", [-1, 64])), "shape"),
    "list-dtype": (_header_edit(_set("dtype", ["F32"])), "dtype"),
    "unknown-dtype": (_header_edit(_set("dtype", "F128")), "dtype"),
    "int-dtype": (_header_edit(_set("dtype", 32)), "dtype"),
    "lying-dtype": (_header_edit(_set("dtype", "F16")), "the header lies about"),
    "lying-shape": (_header_edit(lambda h: h[W].update(shape=[h[W]["shape"][0], 1])),
                    "the header lies about"),
    "entry-not-object": (_header_edit(lambda h: h.update({W: [1, 2, 3]})), "not an object"),
    "entry-missing-field": (_header_edit(lambda h: h[W].pop("data_offsets")), "lacks"),
    "metadata-non-string": (_header_edit(lambda h: h.update(__metadata__={"format": 1})),
                            "__metadata__"),
    "metadata-list": (_header_edit(lambda h: h.update(__metadata__=["pt"])), "__metadata__"),
    "metadata-nested": (_header_edit(lambda h: h.update(__metadata__={"a": {"b": "c"}})),
                        "__metadata__"),
    "deeply-nested": (_raw(_deep), "nested too deeply"),
    "header-is-list": (_raw(lambda h: b"[1, 2]"), "not an object"),
    "not-json": (_raw(lambda h: b"{not json"), "not valid JSON"),
    "not-utf8": (_raw(lambda h: b'{"\xff\xfe": 1}'), "not valid JSON"),
    "nan-constant": (_raw(lambda h: json.dumps(h).replace('"shape": [', '"shape": [NaN, ', 1)
                          .encode()), "not valid JSON"),
    "duplicate-key": (_raw(lambda h: b'{"a": 1, "a": 2}'), "appears twice"),
    "gap": (_header_edit(lambda h: h[W].update(
        data_offsets=[h[W]["data_offsets"][0] + 4, h[W]["data_offsets"][1] + 4])),
        "overlaps or leaves a gap"),
}


def _file_edit(kind):
    def edit(path):
        data = path.read_bytes()
        if kind == "truncated":
            path.write_bytes(data[:-100])
        elif kind == "padded":
            path.write_bytes(data + b"\0" * 8)
        elif kind == "tiny":
            path.write_bytes(data[:5])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "huge-length":
            path.write_bytes(struct.pack("<Q", 2 ** 62) + data[8:])
        elif kind == "length-past-end":
            path.write_bytes(struct.pack("<Q", len(data)) + data[8:])

    return edit


FILES = {
    "truncated": "truncated", "padded": "truncated or padded", "tiny": "no header",
    "empty": "no header", "huge-length": "header claims", "length-past-end": "header claims",
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_malformed_header(make_src, tmp_path, capsys, case):
    edit, match = HEADERS[case]
    src = make_src()
    edit(src / FILE)
    err = assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", "--to", "mup",
                                            "-r", "0.5", "--json"], match)
    assert FILE in err


@pytest.mark.parametrize("case", sorted(FILES))
def test_malformed_file(make_src, tmp_path, capsys, case):
    src = make_src()
    _file_edit(case)(src / FILE)
    err = assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", "--to", "mup",
                                            "-r", "0.5", "--json"], FILES[case])
    assert FILE in err


INDEX = "model.safetensors.index.json"


def _index_edit(change):
    def edit(src):
        path = src / INDEX
        data = json.loads(path.read_text())
        out = change(data, sorted(p.name for p in src.glob("model-*.safetensors")))
        path.write_text(out if isinstance(out, str) else json.dumps(data))

    return edit


def _first_key_to(value):
    def change(d, shards):
        d["weight_map"][next(iter(d["weight_map"]))] = value

    return change


def _other_shard(d, shards):
    key = next(iter(d["weight_map"]))
    d["weight_map"][key] = next(s for s in shards if s != d["weight_map"][key])


def _stale_single(src):
    (src / "model.safetensors").write_bytes((src / next(iter(sorted(
        p.name for p in src.glob("model-*.safetensors"))))).read_bytes())


def _stray_shard(src):
    first = sorted(p.name for p in src.glob("model-*.safetensors"))[0]
    (src / "model-00009-of-00009.safetensors").write_bytes((src / first).read_bytes())


def _unlisted(d, shards):
    d["weight_map"].pop(next(iter(d["weight_map"])))


INDEXES = {
    "not-json": (_index_edit(lambda d, s: "{oops"), "not valid JSON"),
    "a-list": (_index_edit(lambda d, s: "[1]"), "weight_map"),
    "no-weight-map": (_index_edit(lambda d, s: d.pop("weight_map")), "weight_map"),
    "weight-map-list": (_index_edit(lambda d, s: d.update(weight_map=[1])), "weight_map"),
    "empty-weight-map": (_index_edit(lambda d, s: d.update(weight_map={})), "lists no tensors"),
    "int-file": (_index_edit(_first_key_to(3)), "not a file name"),
    "path-traversal": (_index_edit(_first_key_to("../gpt2/model.safetensors")),
                       "not a file name"),
    "absolute-path": (_index_edit(_first_key_to("/etc/passwd")), "not a file name"),
    "missing-shard": (_index_edit(_first_key_to("model-00042-of-00042.safetensors")),
                      "missing shard"),
    "wrong-shard": (_index_edit(_other_shard), "index.json puts"),
    "unlisted-tensor": (_index_edit(_unlisted), "the index does not list"),
    "stale-single-file": (_stale_single, "stale single file"),
    "stray-shard": (_stray_shard, "not part of the model's weights"),
}


@pytest.mark.parametrize("case", sorted(INDEXES))
def test_malformed_index(make_src, tmp_path, capsys, case):
    edit, match = INDEXES[case]
    src = make_src("gpt2-sharded")
    edit(src)
    assert_refused(capsys, tmp_path, ["convert", src, tmp_path / "out", "--to", "mup", "-r",
                                      "0.5", "--json"], match)
