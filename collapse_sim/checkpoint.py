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


def _split(groups: list[dict[str, np.ndarray]]):
    """The orbax tree (non-empty arrays; orbax refuses zero-size ones) and the
    description of every array for the metadata."""
    tree, described = {}, []
    for i, arrays in enumerate(groups):
        desc = {}
        for name, a in arrays.items():
            a = np.asarray(a)
            desc[name] = {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": crc32(a)}
            if a.size:
                tree.setdefault(f"group_{i}", {})[name] = a
        described.append(desc)
    return tree, described


class Checkpointer:
    """Writes a run's checkpoints, keeping the newest `keep`.

    `save` returns once the arrays are handed to orbax; the write finishes in
    the background. `wait` blocks until it is on disk. Errors of either raise
    `SaveError`.
    """

    def __init__(self, run_dir: str | Path, keep: int):
        ocp = _ocp()
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
        self.pending: int | None = None

    def next_step(self) -> int:
        dirs = step_dirs(self.run_dir)
        return (max(dirs) if dirs else 0) + 1

    def save(self, groups: list[dict[str, np.ndarray]], meta: dict) -> int:
        """Start saving a checkpoint; returns its step."""
        self.wait()
        step = self.next_step()
        tree, described = _split(groups)
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
        self.pending = step
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
    tree = {}
    if any(int(np.prod(d["shape"])) for desc in described for d in desc.values()):
        ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        try:
            tree = ckptr.restore((path / "state").absolute())
        except Exception as e:
            raise Unusable(f"its arrays cannot be read ({_reason(e)})") from None
        finally:
            ckptr.close()
    groups = []
    for i, desc in enumerate(described):
        saved = tree.get(f"group_{i}", {}) if isinstance(tree, dict) else {}
        arrays = {}
        for name, d in desc.items():
            shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
            a = np.asarray(saved[name]) if name in saved else np.zeros(shape, dtype)
            if a.shape != shape or a.dtype != dtype:
                raise Unusable(f"group {i} array {name} has shape {a.shape} {a.dtype}, expected {shape} {dtype}")
            if crc32(a) != d["crc32"]:
                raise Unusable(f"group {i} array {name} fails its checksum (the file is damaged)")
            arrays[name] = a
        groups.append(arrays)
    return meta, groups


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
