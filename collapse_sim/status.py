"""`collapse-sim inspect`: what a run directory holds, from its files alone.

Reads run.json, config.yaml, the checkpoints' metadata and the metric parts'
footers; changes nothing. With `verify`, every checkpoint is restored and its
checksums checked.
"""

from __future__ import annotations

from pathlib import Path

from collapse_sim import checkpoint, results, rundir
from collapse_sim import config as cfgmod
from collapse_sim.rundir import CONFIG_FILE, at_text, format_bytes


def inspect(run_dir: str | Path, verify: bool = False) -> int:
    """Print what a run directory holds; changes nothing. Returns the exit
    code: 1 when `verify` finds an unusable checkpoint, else 0."""
    out = Path(run_dir)
    info = rundir.read_info(out)
    try:
        cfg = cfgmod.load(out / CONFIG_FILE)
        config_line = _config_summary(cfg)
    except cfgmod.ConfigError as e:
        cfg, config_line = None, f"unreadable ({e})"
    holder = rundir.held_by(out)
    status = info.get("status", "?")
    if holder:
        status = f"running now (pid {holder})"
    elif status == "running":
        status = "not running (the process that ran it ended without a word: killed?)"
    listed = checkpoint.list_checkpoints(out)
    lines = [
        ("run", str(out)),
        ("status", status + (f": {info['error']}" if info.get("error") else "")),
        ("config", config_line),
    ]
    if cfg is not None and (cfg.sweep or cfg.points):
        parts = [f"{k}: {list(v)}" for k, v in cfg.sweep] + [f"{len(cfg.points)} explicit points"] * bool(cfg.points)
        lines.append(("sweep", "; ".join(parts)))
    lines.append(("cells", f"{info['cells']:,}" + (f" ({cfg.replicates} replicates per sweep point)" if cfg else "")))
    procs = info.get("processes", 1)
    lines.append(
        ("processes", f"{procs}" + (" (distributed)" if procs > 1 else "") + f", {info.get('devices', '?')} device(s)")
    )
    usable = [c for c in listed if c.meta is not None]
    newest = usable[-1].meta if usable else None
    if info.get("status") == "complete":
        done = f"{info['generations']} of {info['generations']} (complete)"
    elif newest:
        done = f"{at_text(newest.get('cells_at', {}))}, of {info['generations']} (checkpoint {usable[-1].step})"
    else:
        done = f"none saved yet, of {info['generations']}"
    lines.append(("generations", done))
    if cfg is not None:
        lines.append(("checkpoints", f"{cfg.checkpoint.cadence()}, newest {cfg.checkpoint.keep} kept"))
    parts = results.part_files(out)
    rows = 0
    for p in parts:
        try:
            rows += results.part_rows(p)
        except Exception:
            pass
    covered = newest["metrics"]["rows"] if newest else 0
    extra = rows - covered if newest and info.get("status") != "complete" else 0
    lines.append(
        (
            "metrics",
            f"{rows:,} rows in {len(parts)} part(s)"
            + (f"; {extra:,} written after the newest checkpoint (recomputed on resume)" if extra > 0 else ""),
        )
    )
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    if listed:
        print()
        print(f"  {'step':>4}  {'generation':>10}  {'reason':<7}  {'saved':<19}  {'size':>10}")
        for c in listed:
            if c.meta is None:
                print(
                    f"  {c.step:>4}  {'?':>10}  {'':<7}  {'':<19}  {format_bytes(c.bytes):>10}  unusable: {c.problem}"
                )
                continue
            lo, hi = c.meta.get("generation_min"), c.meta.get("generation_max")
            gen, note = (f"{lo}", "") if lo == hi else ("mixed", f"  ({at_text(c.meta.get('cells_at', {}))})")
            print(
                f"  {c.step:>4}  {gen:>10}  {str(c.meta.get('reason', '')):<7}  "
                f"{str(c.meta.get('saved', '')):<19}  {format_bytes(c.bytes):>10}{note}"
            )
        print(f"  {'':>4}  {'':>10}  {'total':<7}  {'':<19}  {format_bytes(sum(c.bytes for c in listed)):>10}")
    aside = out / checkpoint.UNUSABLE_DIR
    if aside.is_dir() and any(aside.iterdir()):
        print(f"set aside as unusable: {', '.join(sorted(p.name for p in aside.iterdir()))} (in {aside})")
    if verify:
        bad = 0
        for c in listed:
            try:
                checkpoint.restore(out, c.step)
                print(f"checkpoint {c.step}: verified")
            except checkpoint.Unusable as e:
                bad += 1
                print(f"checkpoint {c.step}: unusable: {e}")
        if bad:
            return 1
    if info.get("status") != "complete" and not holder:
        print(f"continue with: collapse-sim resume {out}")
    return 0


def _config_summary(cfg) -> str:
    src = cfg.source
    if src.kind == "text":
        source = f"text ({src.path or 'built-in'})"
    elif src.kind == "markov":
        source = f"markov (V={src.vocab_size}, order {src.order}, seed {src.seed})"
    else:
        source = f"categorical (V={src.vocab_size})"
    m = cfg.model
    if m.kind == "transformer":
        model = (
            f"transformer d_model {m.d_model}, layers {m.layers}, heads {m.heads}, steps {m.steps}, "
            f"batch {m.batch_size}, lr {m.learning_rate:g}, init {m.init}, {m.dtype}"
        )
    else:
        model = f"ngram order {m.order}, smoothing {m.smoothing:g}"
    return (
        f"{cfg.name}: {source}; {model}; "
        f"N0={cfg.real.sequences}, L={cfg.real.seq_len}, k={cfg.generate.sequences}; "
        f"policy {cfg.corpus.policy}; seed {cfg.seed}"
    )
