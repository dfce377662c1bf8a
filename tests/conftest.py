import os

# Two XLA CPU devices, so the tests exercise cells sharded across devices.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

# LLVM's backend optimisation off: the suite's time is mostly XLA compiling
# small programs, and this halves it. Every comparison a test makes is
# between runs under the same flags, and the last-bit differences the
# invariants guard against (a batch of one cell per device, for one) still
# show at this level. To test at the production level, put
# --xla_backend_optimization_level=2 in XLA_FLAGS.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ["XLA_FLAGS"] + " --xla_backend_optimization_level=0").strip()

# A persistent compilation cache for this session (also inherited by the CLI
# subprocesses of the fault tests): each run of a config compiles once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="collapse-sim-test-jax-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax
import numpy as np
import pytest

from tests.helpers import ALL, TWO, run_cli, write

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """Uninterrupted CLI runs of TWO and ALL (9 generations), shared by every test that only reads them."""
    d = tmp_path_factory.mktemp("reference")
    refs = {}
    for name, text in (("two", TWO), ("all", ALL)):
        assert run_cli("run", write(d, text, f"{name}.yaml"), "--out", d / name, "--quiet") == 0
        refs[name] = d / name
    return refs


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the cache is shared, the controller removes it
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    if os.path.basename(cache).startswith("collapse-sim-test-jax-"):
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(cache + "-programs", ignore_errors=True)  # collapse_sim.compiled's, beside it
