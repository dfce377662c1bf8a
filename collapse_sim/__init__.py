"""collapse_sim: a JAX simulation engine for model-collapse research.

The library API (the `collapse-sim` command is a thin shell over it)::

    import collapse_sim
    run_dir = collapse_sim.run("configs/quickstart.yaml", overrides=["replicates=4"])
    collapse_sim.resume(run_dir, generations=80)      # continue or extend a run
    df = collapse_sim.load_metrics(run_dir)           # one row per cell per generation
    summary = collapse_sim.report(run_dir, collapse_on=["heldout_nll>=1.2*gen0"])  # RUN_DIR/report/

Importing the package is light: JAX, pandas, pyarrow, matplotlib and orbax
are imported when first used, and nothing about the process is changed until
a run starts.
"""

from __future__ import annotations

import importlib

__version__ = "0.3.0"

# public name -> the module that defines it, imported on first use
_LAZY = {
    "run": "collapse_sim.orchestrate",
    "resume": "collapse_sim.orchestrate",
    "Interrupted": "collapse_sim.signals",
    "Reporter": "collapse_sim.progress",
    "load_metrics": "collapse_sim.results",
    "report": "collapse_sim.reporting",
    "Config": "collapse_sim.schema",
    "ConfigError": "collapse_sim.schema",
    "UserError": "collapse_sim.rundir",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'collapse_sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
