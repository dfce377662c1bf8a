"""The run directory: its files, its lock, and the config fingerprint.

::

    RUN_DIR/
      run.json               format, status, name, cells, generations (the target), fingerprint, ...
      config.yaml            the resolved config (read back with a safe YAML loader)
      metrics/part-NNNNN.parquet
      checkpoints/<step>/    orbax steps (checkpoint.py)
      unusable-checkpoints/  checkpoints resume found damaged, set aside
      summary.csv, heldout_nll.png, metrics.png   when the run completes
      .lock                  held (flock) by the process running it

Nothing here evaluates what it reads: run.json is JSON, config.yaml goes
through `config.load` (yaml.safe_load).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from datetime import datetime
from pathlib import Path

from collapse_sim.schema import Config, unused_model_keys

FORMAT_VERSION = 4
# what made a run directory of an older format, and what can resume it
OLDER_FORMATS = {
    1: "was made before checkpoints existed and cannot be resumed; start a new run",
    2: "was written by collapse-sim 0.1 (checkpoints name parameters by leaf order); "
    "resume it with that version: pip install 'collapse_sim==0.1.*'",
    3: "was written by collapse-sim 0.2 (accumulate_subsample drew T_g with another sampler, so its "
    "generations would not continue the same trajectories); resume it with that version: "
    "pip install 'collapse_sim==0.2.*'",
}
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"

# keys a resumed run may change without changing its results
FREE_KEYS = ("name", "checkpoint.every", "checkpoint.keep")


class UserError(Exception):
    """A mistake of the user's that is not in a config (paths, run dirs)."""


def stamped_path(parent: Path, name: str) -> Path:
    """parent/<name>-<YYYYmmdd-HHMMSS>, with -2, -3, ... added if that exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = parent / f"{name}-{stamp}", 2
    while path.exists():
        path, i = parent / f"{name}-{stamp}-{i}", i + 1
    return path


def write_json(path: Path, obj: dict) -> None:
    """Replace a JSON file atomically (a crash leaves the old one or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_info(run_dir: Path) -> dict:
    """run.json of a run directory; UserError (one line) if it is not a run
    of this format."""
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory")
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: not a collapse-sim run directory (no {RUN_FILE})")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path}: unreadable ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(info, dict) or "format" not in info:
        raise UserError(f"{path}: not a collapse-sim run file (no format field)")
    if info["format"] != FORMAT_VERSION:
        why = OLDER_FORMATS.get(info["format"], "is not one this version knows (made by a newer collapse-sim?)")
        raise UserError(
            f"{run_dir}: run directory format {info['format']!r} {why}; this collapse-sim reads format {FORMAT_VERSION}"
        )
    for key, kind in (("generations", int), ("name", str), ("cells", int)):
        if not isinstance(info.get(key), kind):
            raise UserError(f"{path}: {key}: missing or not a {kind.__name__}")
    return info


class RunLock:
    """An exclusive flock on RUN_DIR/.lock for as long as a process runs the
    run; released by the kernel however the process ends."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.path.parent}: cannot lock the run directory ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise UserError(
                f"{self.path.parent}: in use by another collapse-sim process{f' (pid {holder})' if holder else ''}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def held_by(run_dir: Path) -> str | None:
    """The pid (as text) of a live process holding the run's lock, else None."""
    path = run_dir / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def fingerprint(cfg: Config, source_digests: list[str]) -> dict:
    """Every key that shapes a run's results, flattened to dotted keys (the
    sweep as ``sweep.<key>``), with the content digest of each source. Not
    included: FREE_KEYS, `generations` (extended with --generations) and the
    model keys of the other family, and the filter's keys when there is no
    filter (so a run made before filters existed resumes)."""
    flat = _flat(cfg.to_dict())
    for key in FREE_KEYS + ("generations",) + tuple(unused_model_keys(cfg.model.kind)):
        flat.pop(key, None)
    if cfg.generate.filter.kind == "none" and not any(k.startswith("generate.filter.") for k in cfg.sweep_keys):
        for key in [k for k in flat if k.startswith("generate.filter.")]:
            del flat[key]
    flat["source.content"] = sorted(set(source_digests))
    return json.loads(json.dumps(flat))  # tuples as lists, as they come back from JSON


def changed_key(saved: dict, now: dict) -> tuple[str, object, object] | None:
    """The first key whose value differs: (key, saved value, current value)."""
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            return key, saved.get(key), now.get(key)
    return None


def at_text(at: dict) -> str:
    """'every cell at generation 10' or '12 cells at generation 10, 24 not started'."""
    if len(at) == 1:
        ((g, _),) = at.items()
        return "no cell started" if g == "-1" else f"every cell at generation {g}"
    return ", ".join(f"{n:,} cells " + ("not started" if g == "-1" else f"at generation {g}") for g, n in at.items())


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def default_out(name: str) -> Path:
    """runs/<name>-<timestamp>/ (a name is never a path)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "run"
    return stamped_path(Path("runs"), name)


def check_new_run_dir(out: Path) -> None:
    """Refuse a directory that holds anything: runs are never overwritten."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out}: --out exists and is not a directory")
        if (out / RUN_FILE).exists():
            raise UserError(
                f"{out}: already holds a run; choose another --out (runs are never overwritten), "
                f"or continue it with: collapse-sim resume {out}"
            )
        if any(out.iterdir()):
            raise UserError(f"{out}: --out is a non-empty directory that is not a run; choose an empty or new one")


def make_run_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the run directory ({e.strerror or e})") from None
