"""Running small plans in-process and collecting their metric rows."""

import jax
import pandas as pd

from collapse_sim import config, loop, plan as planmod


def run_rows(cfg, devices=None, keep=None, chunk=None) -> pd.DataFrame:
    """Metrics of a config as a DataFrame sorted by (cell, generation).

    keep(cell) -> bool filters the cells that run; chunk overrides the chunk size.
    """
    devices = devices or jax.local_devices()
    plan = planmod.make_plan(cfg, "test.yaml", devices)
    for g in plan.groups:
        if keep is not None:
            g.cells = [c for c in g.cells if keep(c)]
        if chunk is not None:
            g.chunk_size = chunk
    plan.groups = [g for g in plan.groups if g.cells]
    frames = []
    loop.run_plan(plan, lambda cols: frames.append(pd.DataFrame(cols)), devices=devices)
    return pd.concat(frames).sort_values(["cell", "generation"]).reset_index(drop=True)


def load(overrides, path=None):
    return config.load(path, overrides)
