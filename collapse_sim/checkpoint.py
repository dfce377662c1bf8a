"""Checkpoints of a run, on orbax-checkpoint's `CheckpointManager`.

A checkpoint is one orbax step under ``RUN_DIR/checkpoints/<step>/`` with two
items:

- ``state``: for each group of the plan, its cells' state as host arrays
  (``group_<i>/<name>``): the cell index and last completed generation of each
  cell and the packed corpus state (`corpus.to_host`). Cells need not all be at
  the same generation: a run stopped by a signal saves each chunk where it is.
- ``meta`` (JSON): format, when and why it was saved, the generations done,
  the config fingerprint, the shape, dtype and CRC-32 of every array, and the
  manifest of metric parts written so far (name, rows, bytes, CRC-32).

In a run of several processes each holds a contiguous share of every group's
cells: an array is saved as one global array sharded over the processes
(orbax writes each process's piece, and commits the step only when every
process has written its own), each piece padded to the longest; the meta
gives each piece's rows and CRC-32 (``pieces``), and a restore on any number
of processes reads the whole and strips the padding.

Steps are numbered in save order (1, 2, ...), not by generation. orbax writes
a step under a temporary name and renames it when complete, so a save cut
short leaves the previous checkpoints untouched; the checksums catch what
orbax would read back silently (a garbled data file decodes without error).
Nothing here unpickles: arrays are tensorstore/OCDBT files, metadata is JSON.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from collapse_sim.distributed import Processes
from collapse_sim.results import METRICS_DIR, PART_RE, file_crc32
from collapse_sim.rundir import stamped_path

CKPT_DIR = "checkpoints"
UNUSABLE_DIR = "unusable-checkpoints"
FORMAT = 2  # of the checkpoint layout (1: parameters named by leaf order); the run directory has its own


class SaveError(Exception):
    """A checkpoint could not be written (disk full, unwritable directory)."""


class Unusable(Exception):
    """A checkpoint that cannot be restored; the message says why."""


def crc32(a: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8)):08x}"


def _reason(e: BaseException) -> str:
    """A one-line reason from an orbax/tensorstore/OS error."""
    text = str(e)
    m = re.search(r":\s*([^:\[\]]+?)\s*\[os_error_code='?(\d+)'?\]", text)
    if m:
        return m.group(1).strip()
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    line = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def step_dirs(run_dir: Path) -> list[int]:
    """Steps present under checkpoints/ (complete or not), oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def _describe(groups: list[dict[str, np.ndarray]]) -> list[dict]:
    """Shape, dtype and CRC-32 of every array, for the metadata."""
    return [
        {
            name: {"shape": list(np.shape(a)), "dtype": np.asarray(a).dtype.str, "crc32": crc32(np.asarray(a))}
            for name, a in arrays.items()
        }
        for arrays in groups
    ]


def _merged(per_process: list[list[dict]]) -> list[dict]:
    """One description from every process's: the whole array's shape (the
    pieces stacked in process order) and each piece's rows and CRC-32."""
    out = []
    for gi, desc in enumerate(per_process[0]):
        merged = {}
        for name, d in desc.items():
            pieces = [p[gi][name] for p in per_process]
            merged[name] = {
                "shape": [sum(x["shape"][0] for x in pieces), *d["shape"][1:]],
                "dtype": d["dtype"],
                "pieces": [[x["shape"][0], x["crc32"]] for x in pieces],
            }
        out.append(merged)
    return out


def _row_bytes(a: np.ndarray) -> np.ndarray:
    """An array's rows as bytes: (rows, bytes per row) uint8."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(len(a), a.itemsize * int(np.prod(a.shape[1:])))


def _tree(groups: list[dict[str, np.ndarray]], described: list[dict], processes) -> dict:
    """The orbax tree: non-empty arrays only (orbax refuses zero-size ones);
    with several processes, global arrays of padded pieces, one per process."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    if processes.many:
        firsts = [
            min((d for d in jax.devices() if d.process_index == i), key=lambda d: d.id) for i in range(processes.count)
        ]
        sharding = NamedSharding(Mesh(np.array(firsts), ("processes",)), P("processes"))
    tree = {}
    for i, (arrays, desc) in enumerate(zip(groups, described)):
        for name, a in arrays.items():
            d = desc[name]
            if not int(np.prod(d["shape"])):
                continue
            if processes.many:  # as raw bytes per row: JAX would narrow 64-bit dtypes
                longest = max(rows for rows, _ in d["pieces"])
                raw = _row_bytes(np.asarray(a))
                pad = np.zeros((longest - len(raw), raw.shape[1]), np.uint8)
                a = jax.make_array_from_process_local_data(
                    sharding, np.concatenate([raw, pad]), (processes.count * longest, raw.shape[1])
                )
            tree.setdefault(f"group_{i}", {})[name] = a
    return tree


class Checkpointer:
    """Writes a run's checkpoints, keeping the newest `keep`.

    `save` returns once the arrays are handed to orbax; the write finishes in
    the background. `wait` blocks until it is on disk. Errors of either raise
    `SaveError`.
    """

    def __init__(self, run_dir: str | Path, keep: int, processes=None):
        ocp = _ocp()
        self.processes = processes or Processes()
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / CKPT_DIR
        self._ocp = ocp
        try:
            self.mgr = ocp.CheckpointManager(
                self.root.absolute(),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep,
                    create=True,
                    enable_async_checkpointing=True,
                    enable_background_delete=True,  # old steps go without blocking the run; close() waits
                    cleanup_tmp_directories=True,
                ),
                item_names=("state", "meta"),
            )
        except Exception as e:
            raise SaveError(f"{self.root}: cannot open the checkpoint directory ({_reason(e)})") from None
        self.last_saved: int | None = None  # the newest step known complete
        self.last_meta: dict | None = None  # the metadata of the newest save
        self.pending: int | None = None

    def next_step(self) -> int:
        dirs = step_dirs(self.run_dir)
        return (max(dirs) if dirs else 0) + 1

    def save(self, groups: list[dict[str, np.ndarray]], meta: dict) -> int:
        """Start saving a checkpoint; returns its step."""
        self.wait()
        procs = self.processes
        described = _describe(groups)
        if procs.many:
            described = _merged(procs.gather("checkpoint-arrays", described))
        step = procs.broadcast("checkpoint-step", self.next_step() if procs.primary else None)
        tree = _tree(groups, described, procs)
        meta = dict(
            meta, format=FORMAT, step=step, saved=datetime.now().isoformat(timespec="seconds"), arrays=described
        )
        ocp = self._ocp
        try:
            self.mgr.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
            )
        except Exception as e:
            raise SaveError(self._failed(step, e)) from None
        self.pending, self.last_meta = step, meta
        return step

    def wait(self) -> None:
        if self.pending is None:
            return
        step, self.pending = self.pending, None
        try:
            self.mgr.wait_until_finished()
        except Exception as e:
            raise SaveError(self._failed(step, e)) from None
        self.last_saved = step

    def _failed(self, step: int, e: BaseException) -> str:
        prev = f"checkpoint {self.last_saved} is intact" if self.last_saved else "the checkpoints before it are intact"
        return f"{self.root}: cannot write checkpoint {step} ({_reason(e)}); {prev}"

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.mgr.close()


@dataclass
class Listed:
    """A checkpoint as `inspect` shows it, from its files alone."""

    step: int
    bytes: int
    meta: dict | None  # None when its metadata cannot be read
    problem: str | None


def read_meta(path: Path) -> dict:
    """The JSON metadata of the checkpoint at `path` (plain json, no orbax)."""
    try:
        meta = json.loads((path / "meta" / "metadata").read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise Unusable(f"its metadata cannot be read ({_reason(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise Unusable(f"its metadata is not of checkpoint format {FORMAT} (found {got!r})")
    return meta


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_checkpoints(run_dir: str | Path) -> list[Listed]:
    root = Path(run_dir) / CKPT_DIR
    out = []
    for step in step_dirs(run_dir):
        path = root / str(step)
        try:
            meta, problem = read_meta(path), None
        except Unusable as e:
            meta, problem = None, str(e)
        out.append(Listed(step, _dir_bytes(path), meta, problem))
    return out


def _check_parts(run_dir: Path, manifest: dict) -> None:
    for part in manifest["parts"]:
        name = part["name"]
        if not PART_RE.fullmatch(name):
            raise Unusable(f"its metrics manifest names an unexpected file {name!r}")
        path = run_dir / METRICS_DIR / name
        if not path.is_file():
            raise Unusable(f"metrics/{name}, written before it, is missing")
        if path.stat().st_size != part["bytes"] or file_crc32(path) != part["crc32"]:
            raise Unusable(f"metrics/{name}, written before it, has changed")


def restore(run_dir: str | Path, step: int) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """(meta, group arrays) of a checkpoint, verified; `Unusable` otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / CKPT_DIR / str(step)
    meta = read_meta(path)
    try:
        described = meta["arrays"]
        manifest = meta["metrics"]
        assert isinstance(described, list) and isinstance(manifest, dict)
    except (KeyError, AssertionError):
        raise Unusable("its metadata is incomplete") from None
    _check_parts(run_dir, manifest)
    ocp = _ocp()
    wanted = {
        f"group_{i}": {
            name: ocp.RestoreArgs(restore_type=np.ndarray) for name, d in desc.items() if np.prod(d["shape"])
        }
        for i, desc in enumerate(described)
    }
    tree = {}
    if any(wanted.values()):
        ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        try:  # as host arrays, whatever devices and processes wrote them
            tree = ckptr.restore((path / "state").absolute(), args=ocp.args.PyTreeRestore(restore_args=wanted))
        except Exception as e:
            raise Unusable(f"its arrays cannot be read ({_reason(e)})") from None
        finally:
            ckptr.close()
    groups = []
    for i, desc in enumerate(described):
        saved = tree.get(f"group_{i}", {}) if isinstance(tree, dict) else {}
        groups.append({name: _verified(i, name, d, saved.get(name)) for name, d in desc.items()})
    return meta, groups


def _verified(group: int, name: str, d: dict, saved) -> np.ndarray:
    """A saved array checked against its description, its pieces' padding stripped."""
    shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
    pieces = d.get("pieces")
    if pieces is None:  # written by one process: the array itself
        a = np.asarray(saved) if saved is not None else np.zeros(shape, dtype)
        if a.shape != shape or a.dtype != dtype:
            raise Unusable(f"group {group} array {name} has shape {a.shape} {a.dtype}, expected {shape} {dtype}")
        if crc32(a) != d["crc32"]:
            raise Unusable(f"group {group} array {name} fails its checksum (the file is damaged)")
        return a
    longest = max(rows for rows, _ in pieces)
    row = dtype.itemsize * int(np.prod(shape[1:]))
    whole = (len(pieces) * longest, row)
    a = np.asarray(saved) if saved is not None else np.zeros(whole, np.uint8)
    if a.shape != whole or a.dtype != np.uint8:
        raise Unusable(f"group {group} array {name} has shape {a.shape} {a.dtype}, expected {whole} uint8")
    parts = []
    for p, (rows, crc) in enumerate(pieces):
        piece = np.ascontiguousarray(a[p * longest : p * longest + rows]).view(dtype).reshape(rows, *shape[1:])
        if crc32(piece) != crc:
            raise Unusable(f"group {group} array {name} (process {p}'s piece) fails its checksum (the file is damaged)")
        parts.append(piece)
    return np.concatenate(parts)


def newest_usable(run_dir: str | Path) -> tuple[int | None, dict | None, list | None, list[tuple[int, str]]]:
    """The newest checkpoint that restores and verifies:
    (step, meta, groups, [(step, why) for each newer unusable one]).

    step is None when none is usable (or none exists)."""
    bad = []
    for step in reversed(step_dirs(run_dir)):
        try:
            meta, groups = restore(run_dir, step)
        except Unusable as e:
            bad.append((step, str(e)))
            continue
        return step, meta, groups, bad
    return None, None, None, bad


def set_aside(run_dir: str | Path, step: int) -> Path:
    """Move an unusable checkpoint out of orbax's directory (nothing is deleted)."""
    run_dir = Path(run_dir)
    (run_dir / UNUSABLE_DIR).mkdir(exist_ok=True)
    dest = stamped_path(run_dir / UNUSABLE_DIR, str(step))
    shutil.move(str(run_dir / CKPT_DIR / str(step)), str(dest))
    return dest


def size_on_disk(run_dir: str | Path) -> int:
    root = Path(run_dir) / CKPT_DIR
    return _dir_bytes(root) if root.is_dir() else 0
