"""Compiled programs kept on disk, so a new process runs a group's programs
without tracing them again.

A `Program` wraps one jitted program of a group (engine.programs: init or
step). The first call in a process with a given signature (the arguments'
tree, shapes, dtypes and shardings) looks for its executable on disk, under
a key made of everything that decides the program:

- the code: a digest of collapse_sim's sources (kernels included),
- JAX and jaxlib versions, the backend (platform and version) and the
  program's devices (ids and kinds), XLA_FLAGS and the JAX settings that
  change what a trace makes,
- the group's static spec (`describe`: a stable text, no object addresses),
  the program's name and the signature.

On a hit the executable is loaded (jax.experimental.serialize_executable),
which takes milliseconds where tracing, lowering and the compilation cache's
lookup take about a second for a small group. On a miss the program is
lowered and compiled (through JAX's persistent compilation cache, if on) and
then written. Anything that cannot be described, serialised or loaded is
compiled as before: the cache only ever saves time, and a loaded executable
is the very one the compiler made, so results are bit-identical.

The cache lives beside JAX's persistent compilation cache (its directory
with `-programs` appended) and is on exactly when that one is
(`process.configure_compilation_cache`). Entries are written whole (a
temporary file renamed into place), so processes may share the directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import time
from functools import lru_cache
from pathlib import Path

import jax

FORMAT = 1  # of an entry's pickle; part of the key

# this process's programs: loaded from disk, compiled, and the seconds spent making them
STATS = {"loaded": 0, "compiled": 0, "seconds": 0.0}


class Undescribable(TypeError):
    """A spec holds a value with no stable description (no disk cache for it)."""


def describe(obj) -> str:
    """A stable text of a static spec: the same spec gives the same text in
    every process (dataclasses field by field, other objects by their type
    and attributes; floats by repr, which round-trips)."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return repr(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj).__name__ + "(" + ",".join(describe(x) for x in obj) + ")"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{describe(k)}:{describe(v)}" for k, v in sorted(obj.items(), key=repr)) + "}"
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if dataclasses.is_dataclass(obj):
        fields = (f"{f.name}={describe(getattr(obj, f.name))}" for f in dataclasses.fields(obj))
        return name + "(" + ",".join(fields) + ")"
    if callable(obj) and hasattr(obj, "__qualname__"):  # a function
        return f"{obj.__module__}.{obj.__qualname__}"
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return name + describe(dict(vars(obj)))
    raise Undescribable(f"no stable description of {name}")


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of collapse_sim's Python sources (kernels included)."""
    import collapse_sim
    import collapse_sim.kernels

    h = hashlib.sha256()
    for root in sorted({Path(collapse_sim.__file__).parent, Path(collapse_sim.kernels.__file__).parent}):
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _environment(devices) -> str:
    from jax._src.lib import version_str as jaxlib_version

    d0 = devices[0]
    settings = (
        "jax_enable_x64",
        "jax_default_matmul_precision",
        "jax_threefry_partitionable",
        "jax_default_prng_impl",
        "jax_numpy_dtype_promotion",
        "jax_numpy_rank_promotion",
    )
    return describe(
        (
            FORMAT,
            code_digest(),
            jax.__version__,
            jaxlib_version,
            d0.platform,
            d0.client.platform_version,
            tuple((d.id, d.device_kind, d.process_index) for d in devices),
            os.environ.get("XLA_FLAGS", ""),
            tuple(str(getattr(jax.config, s, None)) for s in settings),
        )
    )


def cache_dir() -> Path | None:
    """Where programs are kept: beside JAX's persistent compilation cache, or None (off)."""
    base = jax.config.jax_compilation_cache_dir
    return Path(str(base).rstrip("/") + "-programs") if base else None


def _signature(args) -> tuple:
    """The arguments' tree and each leaf's shape, dtype, weak type and
    sharding. Not the aval itself: under JAX 0.11 the outputs of a loaded
    executable carry avals unequal to a compiled one's (each unpickling makes
    another copy of the AutoLayout singleton, compared by identity), which
    made the step load a second time in every process."""
    leaves, tree = jax.tree.flatten(args)
    avals = (jax.typeof(x) for x in leaves)
    return tree, tuple(
        ((tuple(a.shape), str(a.dtype), bool(getattr(a, "weak_type", False))), getattr(x, "sharding", None))
        for a, x in zip(avals, leaves)
    )


def _fresh(lowered):
    """Compile without JAX's persistent compilation cache: an XLA:CPU
    executable loaded from that cache serialises incompletely (running it
    again fails with "Function ... not found"), so only a fresh compile is
    kept. The cache's state is reset around it (JAX memoises whether it is
    used) and is back on afterwards."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    if not jax.config.jax_enable_compilation_cache:
        return lowered.compile()
    cc.reset_cache()
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return lowered.compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
        cc.reset_cache()


class Program:
    """A jitted program, compiled once per signature: from the disk cache
    when it is there, else lowered and compiled (and then kept)."""

    def __init__(self, name: str, jitted, spec, devices):
        self.name, self.jitted, self.devices = name, jitted, tuple(devices)
        try:
            self.ident = describe(spec)
        except Undescribable:
            self.ident = None
        self.ready: dict = {}  # signature -> Compiled

    def __call__(self, *args):
        sig = _signature(args)
        fn = self.ready.get(sig)
        if fn is None:
            t = time.perf_counter()
            fn, how = self._prepare(args, sig)
            self.ready[sig] = fn
            STATS[how] += 1
            STATS["seconds"] += time.perf_counter() - t
        return fn(*args)

    def _path(self, sig) -> Path | None:
        where = cache_dir()
        if where is None or self.ident is None:
            return None
        tree, leaves = sig
        text = "\n".join(
            (_environment(self.devices), self.name, self.ident, str(tree), *(f"{a!r} {s!r}" for a, s in leaves))
        )
        return where / f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:40]}.bin"

    def _prepare(self, args, sig):
        from jax.experimental import serialize_executable as se

        path = self._path(sig)
        if path is not None and path.exists():
            try:
                blob, in_tree, out_tree = pickle.loads(path.read_bytes())
                fn = se.deserialize_and_load(
                    blob, in_tree, out_tree, backend=self.devices[0].client, execution_devices=list(self.devices)
                )
                return fn, "loaded"
            except Exception:  # noqa: BLE001 - a stale or damaged entry: compile anew
                pass
        lowered = self.jitted.lower(*args)
        if path is None:
            return lowered.compile(), "compiled"
        compiled = _fresh(lowered)
        try:
            data = pickle.dumps(se.serialize(compiled))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except Exception:  # noqa: BLE001 - not serialisable, or a read-only cache: run without it
            pass
        return compiled, "compiled"
