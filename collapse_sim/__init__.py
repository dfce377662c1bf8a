"""collapse_sim: a JAX simulation engine for model-collapse research.

`load_metrics(run_dir)` reads a run's metrics as a pandas DataFrame; the
`collapse-sim` command runs experiments (see collapse_sim.cli).
"""

from collapse_sim.results import load_metrics

__all__ = ["load_metrics"]
__version__ = "0.1.0"
