"""What a SRC folder holds: its files (walked safely) and which of them are the weights.

The walk follows symbolic links (the Hugging Face cache stores a snapshot as links to blobs)
and refuses, naming the entry, anything that cannot be copied as data: a dangling link, a link
loop, a FIFO (opening it would block), a socket or a device. The weights are one
``model.safetensors``, shards listed by ``model.safetensors.index.json``, or the same with
pickled ``pytorch_model.bin`` files; an ambiguous folder (a stale single file beside an index,
a shard the index does not list) is refused, and weights in other formats (TensorFlow, Flax,
or ``.bin`` beside safetensors) are left out of DST, since they would not be converted.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jsonfile import read_json as _read_json
from .placement import FileId, file_id
from .safetensors_io import CheckpointError

__all__ = ["SrcTree", "walk_src", "Weights", "find_weights", "read_json"]

ST_INDEX, ST_SINGLE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_SINGLE = "pytorch_model.bin.index.json", "pytorch_model.bin"
OTHER_FORMATS = ("tf_model*.h5", "tf_model.h5.index.json", "flax_model*.msgpack",
                 "flax_model.msgpack.index.json", "model.ckpt*")
_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


@dataclass
class SrcTree:
    root: Path
    files: list[str] = field(default_factory=list)  # relative paths of regular files
    dirs: list[str] = field(default_factory=list)  # relative paths of folders, parents first
    dir_ids: set[FileId] = field(default_factory=set)


def walk_src(src: Path) -> SrcTree:
    """Every file and folder under SRC, links followed, loops and special files refused."""
    tree = SrcTree(src)
    root_id = file_id(os.stat(src))
    tree.dir_ids.add(root_id)

    def visit(folder: Path, rel: str, on_path: frozenset[FileId]) -> None:
        try:
            names = sorted(os.listdir(folder))
        except OSError as err:
            raise CheckpointError(f"SRC folder {folder} cannot be listed ({err.strerror})") \
                from None
        for name in names:
            path, r = folder / name, f"{rel}{name}"
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise CheckpointError(f"SRC entry {r} is a dangling symbolic link "
                                      f"(to {os.readlink(path)!r})") from None
            except OSError as err:
                raise CheckpointError(f"SRC entry {r} cannot be read: {err.strerror} (a "
                                      "symbolic link loop?)") from None
            if stat.S_ISDIR(st.st_mode):
                ident = file_id(st)
                if ident in on_path:
                    raise CheckpointError(f"SRC entry {r} is a symbolic link loop (it leads "
                                          "back to a folder above it)")
                tree.dirs.append(r)
                tree.dir_ids.add(ident)
                visit(path, r + "/", on_path | {ident})
            elif stat.S_ISREG(st.st_mode):
                tree.files.append(r)
            else:
                kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
                raise CheckpointError(f"SRC entry {r} is {kind}: only files and folders can "
                                      "be copied")

    visit(src, "", frozenset({root_id}))
    return tree


def read_json(path: Path, what: str) -> Any:
    """A JSON file of SRC (index, config), its errors as CheckpointError."""
    return _read_json(path, what, CheckpointError)


@dataclass
class Weights:
    kind: str  # "safetensors" or "bin"
    files: list[str]  # SRC file names, in index order
    index: str | None  # the index file's name
    weight_map: dict[str, str] | None
    index_data: dict[str, Any] | None
    out_names: dict[str, str]  # SRC file -> DST file
    left_out: list[str]  # weights in other formats: not converted, not copied

    @property
    def consumed(self) -> set[str]:
        return set(self.files) | ({self.index} if self.index else set()) | set(self.left_out)


def _index(src: Path, name: str, top: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
    data = read_json(src / name, name)
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise CheckpointError(f"{name} is not an index: it needs a 'weight_map' object")
    weight_map = data["weight_map"]
    for key, fname in weight_map.items():
        if not isinstance(fname, str) or not fname or "/" in fname or "\\" in fname \
                or fname in (".", ".."):
            raise CheckpointError(f"{name}: weight_map[{key!r}] = {fname!r} is not a file name "
                                  "in the folder")
        if fname not in top:
            raise CheckpointError(f"missing shard {fname} (listed by {name}, looked in {src})")
    if not weight_map:
        raise CheckpointError(f"{name} lists no tensors")
    return data, weight_map


def find_weights(src: Path, tree: SrcTree) -> Weights:
    """The weight files of SRC and what becomes of each; ambiguity is an error."""
    top = {f for f in tree.files if "/" not in f}
    st = sorted(f for f in top if f.endswith(".safetensors"))
    bins = sorted(f for f in top if fnmatch.fnmatch(f, "pytorch_model*.bin")) + (
        [BIN_INDEX] if BIN_INDEX in top else [])
    other = sorted(f for f in top if any(fnmatch.fnmatch(f, p) for p in OTHER_FORMATS))
    if ST_INDEX in top or ST_SINGLE in top or (st and BIN_INDEX not in top
                                               and BIN_SINGLE not in top):
        kind, index, single, pattern = "safetensors", ST_INDEX, ST_SINGLE, st
        left_out = bins + other
    elif BIN_INDEX in top or BIN_SINGLE in top:
        kind, index, single = "bin", BIN_INDEX, BIN_SINGLE
        pattern = [f for f in bins if f != BIN_INDEX]
        left_out = other
    else:
        raise CheckpointError(f"{src} has no {ST_SINGLE}, {ST_INDEX}, {BIN_SINGLE} nor "
                              f"{BIN_INDEX}")
    if index in top:
        if single in top:
            raise CheckpointError(
                f"{src} holds both {index} and {single}: a stale single file beside shards "
                f"(transformers may load either); remove {single} or {index}"
            )
        data, weight_map = _index(src, index, top)
        files = list(dict.fromkeys(weight_map.values()))
    elif single in top:
        data, weight_map, files = None, None, [single]
    else:
        raise CheckpointError(f"{src} holds {pattern[0]} but neither {single} nor {index}")
    stray = sorted(set(pattern) - set(files))
    if stray:
        raise CheckpointError(
            f"{src} holds {stray[0]}, which is not part of the model's weights "
            f"({index if index in top else single} does not list it): it would be copied "
            "unconverted; remove it or move it away"
        )
    if kind == "safetensors":
        out_names = {f: f for f in files}
    else:
        out_names = {f: (ST_SINGLE if f == BIN_SINGLE else
                         f.replace("pytorch_model", "model", 1)[:-4] + ".safetensors")
                     for f in files}
        clash = sorted(set(out_names.values()) & top)
        if clash:
            raise CheckpointError(f"{src} holds {clash[0]} beside {BIN_SINGLE} weights: which "
                                  "are the model's?")
    return Weights(kind, files, index if index in top else None, weight_map, data, out_names,
                   left_out)


def check_trainer_files(src: Path, top_dirs: list[str]) -> tuple[bool, bool]:
    """(has optimizer.pt, has scheduler.pt); a folder in their place or a lone scheduler is bad."""
    for name in ("optimizer.pt", "scheduler.pt"):
        if name in top_dirs:
            raise CheckpointError(f"{src}/{name} is a folder, not a saved state")
    has_opt = (src / "optimizer.pt").is_file()
    has_sched = (src / "scheduler.pt").is_file()
    if has_sched and not has_opt:
        raise CheckpointError(
            f"{src} holds scheduler.pt but no optimizer.pt: the scheduler's learning rates "
            "cannot be matched to parameter groups"
        )
    return has_opt, has_sched
