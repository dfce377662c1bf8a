"""Distributed runs: launch settings, the share of cells, the supervisor's
reading of the runtime's abort, and real two-process runs on the loopback
interface (two forced CPU devices each) compared with one-process runs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from collapse_sim import checkpoint, supervise
from collapse_sim.distributed import Launch, Processes, gloo_chatter, launch_settings, share
from collapse_sim.rundir import UserError
from tests.helpers import BASE, TWO, assert_same_metrics, run_cli, write

# --- launch settings ---------------------------------------------------------


def test_flags_win_over_the_environment():
    env = {"COLLAPSE_SIM_COORDINATOR": "h:1", "COLLAPSE_SIM_NUM_PROCESSES": "4", "COLLAPSE_SIM_PROCESS_ID": "3"}
    assert launch_settings(env=env) == Launch("h:1", 4, 3)
    assert launch_settings("c:2", 2, 1, env=env) == Launch("c:2", 2, 1)
    assert launch_settings(env={}) == Launch()  # JAX's cluster detection decides


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (("nohost", 2, 0), {}, "--coordinator: expected HOST:PORT"),
        (("h:99999", 2, 0), {}, "--coordinator: expected HOST:PORT"),
        (("h:1", 0, 0), {}, "--num-processes: must be >= 1"),
        (("h:1", 2, 2), {}, "--process-id: must be in [0, 2)"),
        (("h:1", None, None), {}, "--num-processes, --process-id not given and no cluster detected"),
        ((None, None, None), {"COLLAPSE_SIM_NUM_PROCESSES": "two"}, "COLLAPSE_SIM_NUM_PROCESSES: expected an integer"),
    ],
)
def test_bad_launch_settings_are_one_line(args, env, needle):
    with pytest.raises(UserError) as e:
        launch_settings(*args, env=env)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_partial_flags_are_fine_under_a_scheduler():
    assert launch_settings("h:1", None, None, env={"SLURM_JOB_ID": "7"}) == Launch("h:1", None, None)


@pytest.mark.parametrize("n", [0, 1, 5, 7, 64])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shares_are_contiguous_balanced_and_cover(n, count):
    ranges = [share(n, Processes(count, i)) for i in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_one_process_exchanges_nothing():
    p = Processes()
    assert p.gather("x", 3) == [3] and p.broadcast("y", 4) == 4 and p.agree("z", lambda: 5) == 5
    assert p.progress() is None
    with pytest.raises(UserError):
        p.all_ok("w", lambda: (_ for _ in ()).throw(UserError("bad")))


# --- the supervisor's reading of JAX's abort ----------------------------------

PEER_LOST = """E1205 18:22:28.544539    5869 coordination_service.cc:1549] [97] Use error polling to propagate \
the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
/job:jax_worker/replica:0/task:1
The tasks have crashed.
F1205 18:22:28.545235    5880 client.h:80] Terminating process because the JAX distributed service detected \
fatal errors. This most likely indicates that another task died
"""
COORDINATOR_LOST = """E1205 18:23:06.818379    6171 coordination_service_agent.cc:289] Polled an error
F1205 18:23:06.818452    6171 client.h:80] Terminating process because the JAX distributed service detected \
fatal errors. This most likely indicates that another task died
:UNKNOWN:Error received from peer  {grpc_message:"recvmsg:Connection reset by peer", grpc_status:14}
"""


def test_lost_process_is_named():
    assert supervise.lost_process(PEER_LOST) == "process 1"
    assert supervise.lost_process(PEER_LOST.replace("/job:jax_worker/replica:0/task:1", "2")) == "process 2"
    assert supervise.lost_process(COORDINATOR_LOST) == "the coordinator (process 0)"
    assert supervise.lost_process("Traceback (most recent call last):\nValueError: x\n") is None


def test_gloo_chatter_is_dropped_even_interleaved_and_other_output_kept():
    """gloo's connection message, whole or interleaved by two of its threads
    (CI once saw a bare newline reach a quiet process's stdout), is dropped;
    any other native line passes."""
    one = b"[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\n"
    pieces = [b"[Gloo] Rank 1", b" is connected to ", b"1", b" peer ranks. ", b"Expected number of connected "]
    pieces += [b"peer ranks is : ", b"1", b"\n"]
    for cut in range(1, len(pieces)):  # the second message lands after piece `cut` of the first
        stream = b"".join(pieces[:cut]) + one + b"".join(pieces[cut:])
        assert [line for line in stream.splitlines(keepends=True) if not gloo_chatter(line)] == []
    for kept in (b"W0000 something the runtime says\n", b"step 3: loss 1.5\n", b"Rank of a matrix\n"):
        assert not gloo_chatter(kept)


# --- real processes -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(heartbeat: int = 5, connect: int = 60) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "")  # conftest's: two devices, -O0
    env.update(COLLAPSE_SIM_HEARTBEAT_SECONDS=str(heartbeat), COLLAPSE_SIM_CONNECT_SECONDS=str(connect))
    env.pop(supervise.WORKER_ENV, None)
    return env


CLI = [sys.executable, "-m", "collapse_sim.cli"]


def distributed_args(port: int, n: int, i: int) -> list[str]:
    return ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i)]


def start(n: int, verb_args: list, cwd=None, heartbeat: int = 5, extra=lambda i: []) -> list[subprocess.Popen]:
    """n processes of one distributed run (`extra(i)`: more arguments for process i)."""
    port = free_port()
    return [
        subprocess.Popen(
            [*CLI, *map(str, verb_args), "--quiet", *distributed_args(port, n, i), *extra(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env_for(heartbeat),
            cwd=(cwd[i] if isinstance(cwd, list) else cwd),
            start_new_session=True,  # a process group each: a kill takes the supervisor and its worker
        )
        for i in range(n)
    ]


def finish(procs, timeout=240, stdout=False) -> list[tuple]:
    out = []
    for p in procs:
        o, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err.decode()) + ((o.decode(),) if stdout else ()))
    return out


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    cfg = write(d, TWO, "two.yaml")
    results = finish(start(2, ["run", cfg, "--out", d / "run"]), stdout=True)
    assert [rc for rc, _, _ in results] == [0, 0], results
    (_, _, first), (_, err, second) = results
    assert "run directory:" in first and second == "" and err == "", results  # process 1 is quiet
    return d / "run"


@pytest.mark.e2e
def test_two_processes_equal_one(two_process_run, reference):
    """Every cell's metrics bit for bit as the one-process run, each process
    writing its own parts; run.json and inspect say 2 processes."""
    assert_same_metrics(two_process_run, reference["two"])
    names = sorted(p.name for p in (two_process_run / "metrics").iterdir())
    assert any(n.startswith("part-p0-") for n in names) and any(n.startswith("part-p1-") for n in names)
    info = json.loads((two_process_run / "run.json").read_text())
    assert info["processes"] == 2 and info["status"] == "complete"
    assert (two_process_run / "summary.csv").is_file()
    r = subprocess.run(
        [*CLI, "inspect", str(two_process_run)],
        capture_output=True,
        text=True,
        env=env_for(),
    )
    assert r.returncode == 0 and "processes" in r.stdout and " 2" in r.stdout.split("processes", 1)[1].splitlines()[0]


@pytest.mark.e2e
def test_resume_is_elastic_across_process_counts(two_process_run, reference, tmp_path):
    """The 2-process run extended on 1 process, and the 1-process run
    extended on 2 processes, both equal a one-process run made to the longer
    horizon."""
    import shutil

    cfg = write(tmp_path, TWO.replace("generations: 9", "generations: 12"), "twelve.yaml")
    assert run_cli("run", cfg, "--out", tmp_path / "one", "--quiet") == 0
    shutil.copytree(two_process_run, tmp_path / "two-on-one")
    assert run_cli("resume", tmp_path / "two-on-one", "--generations", 12, "--quiet") == 0
    assert_same_metrics(tmp_path / "two-on-one", tmp_path / "one")
    shutil.copytree(reference["two"], tmp_path / "one-on-two")
    results = finish(start(2, ["resume", tmp_path / "one-on-two", "--generations", 12]))
    assert [rc for rc, _ in results] == [0, 0], results
    assert_same_metrics(tmp_path / "one-on-two", tmp_path / "one")
    assert json.loads((tmp_path / "one-on-two" / "run.json").read_text())["processes"] == 2


LONG = BASE.replace("generations: 9", "generations: 150").replace("every: 3", "every: 4")


@pytest.mark.e2e
@pytest.mark.parametrize(
    "victim, named",
    [(1, "process 1"), pytest.param(0, "the coordinator (process 0)", marks=pytest.mark.slow)],
)
def test_a_killed_process_stops_the_other_and_resume_continues(tmp_path, victim, named):
    """kill -9 of one process's group (its host gone) mid-run: the other stops
    within the heartbeat timeout, one line naming the lost process, exit 2;
    the newest complete checkpoint restores, and a resume on one process
    (with 4 devices) ends bit-identical to an uninterrupted run."""
    cfg = write(tmp_path, LONG)
    out = tmp_path / "run"
    procs = start(2, ["run", cfg, "--out", out], heartbeat=3)
    other = procs[1 - victim]
    deadline = time.monotonic() + 180
    while not (out / "checkpoints" / "2").is_dir():
        assert time.monotonic() < deadline and other.poll() is None, finish(procs, 5)
        time.sleep(0.05)
    os.killpg(procs[victim].pid, signal.SIGKILL)  # the host is gone: supervisor and worker
    t0 = time.monotonic()
    other.wait(timeout=60)
    waited = time.monotonic() - t0
    rc, err = finish([other])[0]
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and f"{named} of the distributed run was lost" in lines[0], err
    assert waited < 3 + 20, waited  # the heartbeat timeout, and the runtime's polling
    step, _, _, bad = checkpoint.newest_usable(out)
    assert step is not None and step >= 2 and not bad
    if victim == 1:  # resumed by one process on 4 devices: as a one-process run on 2
        env = dict(env_for(), XLA_FLAGS=os.environ["XLA_FLAGS"].replace("count=2", "count=4"))
        r = subprocess.run([*CLI, "resume", str(out), "--quiet"], env=env)
        assert r.returncode == 0 and json.loads((out / "run.json").read_text())["devices"] == 4
        assert run_cli("run", cfg, "--out", tmp_path / "one", "--quiet") == 0
        assert_same_metrics(out, tmp_path / "one")


@pytest.mark.e2e
def test_unreachable_coordinator_is_one_line(tmp_path):
    cfg = write(tmp_path, BASE)
    args = [*CLI, "run", str(cfg), "--out", str(tmp_path / "r"), *distributed_args(free_port(), 2, 1)]
    r = subprocess.run(args, capture_output=True, text=True, env=env_for(connect=1), timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "cannot reach the coordinator 127.0.0.1:" in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.e2e
def test_a_run_directory_not_shared_is_refused(tmp_path):
    """A relative --out from two working directories: two different folders."""
    cfg = write(tmp_path, BASE)
    cwds = [tmp_path / "a", tmp_path / "b"]
    for c in cwds:
        c.mkdir()
    results = finish(start(2, ["run", cfg, "--out", "run"], cwd=cwds))
    for rc, err in results:
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and "not shared" in lines[0], err
    assert not (cwds[0] / "run").exists() and not (cwds[1] / "run").exists()


@pytest.mark.e2e
def test_no_flags_and_no_cluster_is_one_line(tmp_path):
    """--distributed alone, outside a scheduler: JAX cannot tell where the coordinator is."""
    cfg = write(tmp_path, BASE)
    env = env_for(connect=2)
    for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        env.pop(k, None)
    args = [*CLI, "run", str(cfg), "--out", str(tmp_path / "r"), "--distributed"]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--distributed:" in lines[0], r.stderr


@pytest.mark.e2e
def test_processes_given_different_configs_refuse(tmp_path):
    cfg = write(tmp_path, BASE)
    procs = start(2, ["run", cfg, "--out", tmp_path / "r"], extra=lambda i: ["--set", f"seed={i}"])
    for rc, err in finish(procs):
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and "process(es) 1 differs from process 0's" in lines[0], err
    assert not (tmp_path / "r").exists()
