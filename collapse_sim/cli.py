"""`collapse-sim`: run model-collapse experiments from YAML configs.

A thin shell over the library (`collapse_sim.orchestrate`, `collapse_sim.status`):
argument parsing, the progress bar and exit codes. Verbs: run, resume,
plan, inspect, report. Exit codes: 0 done; 2 something for the user to fix (one line on
stderr naming the file and key: bad input, a damaged run directory, a full or
unwritable disk); 1 a fault of ours (with a traceback); 128 + signal (130
Ctrl-C, 143 SIGTERM) stopped with a checkpoint saved, to be continued with
`collapse-sim resume`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback

from collapse_sim import process
from collapse_sim.rundir import UserError
from collapse_sim.schema import ConfigError


def _processes(args):
    """This process's place in the run: one process, or (--distributed, in
    the worker) the processes JAX's runtime joins."""
    from collapse_sim import distributed

    if not args.distributed:
        return distributed.Processes()
    launch = distributed.launch_settings(args.coordinator, args.num_processes, args.process_id)
    return distributed.connect(launch)


def _work(args, call) -> int:
    """Run `call(processes, reporter)`, through a supervising parent when distributed."""
    from collapse_sim import distributed, supervise
    from collapse_sim.orchestrate import Interrupted
    from collapse_sim.progress import ConsoleReporter, Reporter

    if args.distributed and not supervise.is_worker():
        launch = distributed.launch_settings(args.coordinator, args.num_processes, args.process_id)  # errors first
        where = getattr(args, "out", None) or getattr(args, "run_dir", None)
        return supervise.supervise(
            args.argv, where, distributed.heartbeat_seconds(), launch.coordinator, distributed.connect_seconds()
        )
    procs = _processes(args)
    reporter = ConsoleReporter(args.quiet) if procs.primary else Reporter()
    try:
        call(procs, reporter)
    except Interrupted as e:
        if procs.primary:
            print(e, file=sys.stderr)
        return 128 + e.signum
    except Exception as e:
        if procs.many and supervise.PEER_TROUBLE.search(str(e)):
            # an exchange failed: if a process was lost, the runtime ends this one within
            # its heartbeat timeout and the supervisor names the process; else this error stands
            first = str(e).strip().splitlines()[0][:300]
            print(f"collapse-sim: error: lost contact with the other processes ({first})", file=sys.stderr, flush=True)
            time.sleep(distributed.heartbeat_seconds() + 5)
            return 2
        raise
    return 0


def cmd_run(args) -> int:
    from collapse_sim import orchestrate

    return _work(
        args, lambda procs, rep: orchestrate.run(args.config, args.set or [], args.out, reporter=rep, processes=procs)
    )


def cmd_resume(args) -> int:
    from collapse_sim import orchestrate

    return _work(
        args, lambda procs, rep: orchestrate.resume(args.run_dir, args.generations, reporter=rep, processes=procs)
    )


def _distributed_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "distributed",
        "Run with several processes (hosts, or one per GPU) on JAX's runtime: start the same command in every "
        "process. Without the three flags below, COLLAPSE_SIM_COORDINATOR, COLLAPSE_SIM_NUM_PROCESSES and "
        "COLLAPSE_SIM_PROCESS_ID are read, then JAX's cluster detection (SLURM, Cloud TPU, ...): "
        "`srun collapse-sim run CONFIG --distributed`. The run directory must be on a filesystem every process "
        "shares. A lost process stops the others within COLLAPSE_SIM_HEARTBEAT_SECONDS (default 60), exit 2.",
    )
    g.add_argument("--distributed", action="store_true", help="join a multi-process run (jax.distributed)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
    g.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")


def cmd_plan(args) -> int:
    from collapse_sim import preview

    for line in preview.preview(args.config, args.set or [], args.devices, args.memory_budget, args.time):
        print(line)
    return 0


def cmd_inspect(args) -> int:
    from collapse_sim import status

    return status.inspect(args.run_dir, args.verify)


def cmd_report(args) -> int:
    from collapse_sim import reporting

    table = reporting.report(args.run_dir, args.collapse_on or [], x=args.x, out=args.out)
    out = reporting.report_dir(args.run_dir, args.out)
    print(reporting.printed(table))
    print(f"report: {out / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collapse-sim",
        description="Simulate model collapse: train and sample many tiny language models in parallel, "
        "generation after generation, and record how far they drift from the real data.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    run = sub.add_parser(
        "run",
        help="run an experiment from a YAML config",
        description="Run every cell (sweep point x replicate) of CONFIG through generations 0..G and write "
        "metrics (Parquet), the resolved config, checkpoints, a summary table and plots (held-out NLL; every metric) "
        "to a new run directory. Ctrl-C or SIGTERM saves a checkpoint and exits; `collapse-sim resume` continues.",
    )
    run.add_argument("config", metavar="CONFIG", help="YAML experiment file (see configs/quickstart.yaml)")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="override a config key (value parsed as YAML); repeatable",
    )
    run.add_argument(
        "--out", metavar="DIR", help="run directory (default runs/<name>-<timestamp>/); must be new or empty"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary; print only the run directory")
    _distributed_flags(run)
    run.set_defaults(func=cmd_run)
    resume = sub.add_parser(
        "resume",
        help="continue an interrupted run, or extend a finished one",
        description="Continue RUN_DIR from its newest usable checkpoint to its configured generations (or to "
        "--generations G). The results equal those of a run never interrupted; metric rows written after the "
        "checkpoint are recomputed, not duplicated. A damaged checkpoint is set aside and the previous one used. "
        "RUN_DIR/config.yaml must not have changed in any key that shapes the results.",
    )
    resume.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `collapse-sim run`")
    resume.add_argument(
        "--generations", type=int, metavar="G", help="run to G generations in total (extends a finished run)"
    )
    resume.add_argument("--quiet", action="store_true", help="no progress bar or summary; print only the run directory")
    _distributed_flags(resume)
    resume.set_defaults(func=cmd_resume)
    plan = sub.add_parser(
        "plan",
        help="what a run would do, without running it",
        description="Plan CONFIG without running it: its groups (static shapes), cells, chunks and chunk size, "
        "the estimated memory per cell by the config key that drives each part and per compiled batch against "
        "a device's budget, the checkpoint size and the compiled programs. A config that does not fit is an "
        "error naming the key (exit 2).",
    )
    plan.add_argument("config", metavar="CONFIG", help="a YAML config")
    plan.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config key (repeatable)")
    plan.add_argument("--devices", type=int, metavar="N", help="plan for N devices of this machine's kind")
    plan.add_argument(
        "--memory-budget", type=int, metavar="BYTES", help="bytes a device may give (default: what it has)"
    )
    plan.add_argument(
        "--time",
        action="store_true",
        help="also compile each group and run two generations of one chunk, and estimate the run's duration",
    )
    plan.set_defaults(func=cmd_plan)
    inspect = sub.add_parser(
        "inspect",
        help="print what a run directory holds",
        description="Print a run's status, config summary, generations done, checkpoints (with sizes) and metric rows. "
        "Reads only; changes nothing.",
    )
    inspect.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `collapse-sim run`")
    inspect.add_argument(
        "--verify",
        action="store_true",
        help="also read every checkpoint back and check its checksums (exit 1 if one is unusable)",
    )
    inspect.set_defaults(func=cmd_inspect)
    report = sub.add_parser(
        "report",
        help="figures, a summary table and time to collapse of a run (finished or not)",
        description="Write a report of RUN_DIR (by default to RUN_DIR/report/, removed and re-made each time; "
        "nothing else in RUN_DIR changes): every recorded metric against generation (or the synthetic-to-real "
        "ratio), mean and 95 % band per sweep point; summary.csv; with --collapse-on, each cell's time to "
        "collapse (collapse.parquet), Kaplan-Meier survival and median time to collapse; report.md shows it all.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `collapse-sim run`")
    report.add_argument(
        "--collapse-on",
        action="append",
        metavar="EXPR",
        help="collapse criterion METRIC OP VALUE, OP one of <= < >= >, VALUE a number, X*gen0 or gen0 "
        "(X times the cell's generation-0 value), conditions joined by 'and', e.g. 'heldout_nll>=1.2*gen0' or "
        "'tv_true>=0.1 and support<=3'; repeatable (columns then suffixed _1, _2, ...)",
    )
    report.add_argument(
        "--x",
        choices=("generation", "ratio"),
        default="generation",
        help="x axis of the metric figures: generation (default) or ratio = synthetic sequences admitted so far / N0",
    )
    report.add_argument("--out", metavar="DIR", help="report folder (default RUN_DIR/report/)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    process.configure_host_devices()
    try:
        return args.func(args)
    except (ConfigError, UserError) as e:
        print(f"collapse-sim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("collapse-sim: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            "collapse-sim: internal error (a fault of ours, not your config); "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return 1


def entry() -> None:
    """The console script (and `python -m collapse_sim.cli`): main(), then a
    quick exit. Python's and JAX's teardown take about 0.4 s after a run,
    and by then every file is written and closed; a distributed run exits
    the usual way (JAX's exit hook leaves the cluster)."""
    code = main()
    if "jax" not in sys.modules or _left_alone():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def _left_alone() -> bool:
    from jax._src.distributed import global_state

    return global_state.client is None


if __name__ == "__main__":  # pragma: no cover
    entry()
