"""The ``pipework`` command line: argument parsing only.

```
pipework serve     run the daemon (docs/protocol.md) on embedded defaults or a config
pipework submit    enqueue a task            pipework result   wait for a task's outcome
pipework status    the daemon, or a task     pipework cancel   cancel a task
pipework list      recent tasks              pipework stats    the daemon's counters
pipework workers   worker processes          pipework tasks    the task names a daemon runs
pipework demo      a daemon and a client, end to end
pipework worker    serve a daemon's tasks from another host (a remote worker)
pipework keys      generate CURVE key pairs for tcp:// endpoints
pipework bench     measure: ipc (docs/ipc.md); pool, daemon vs peers (docs/performance.md)
```

Each subcommand hands off to the module that does the work (``service.daemon.server``,
``service.cli.commands``, ``service.cli.demo_pool``); exit codes are listed in
``service.cli.commands``. Also runnable as ``python -m pipework``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipework.protocol.messages import TaskState
from pipework.service.cli.flags import add_settings_flags, settings_given

__all__ = ["build_parser", "main"]


def _serve(args: argparse.Namespace) -> int:
    from pipework.service import logs  # noqa: PLC0415 - keep client commands light
    from pipework.service.daemon import server as daemon  # noqa: PLC0415 - keep client commands light
    from pipework.service.daemon.config import (  # noqa: PLC0415
        ConfigError,
        DaemonSettings,
        load_settings,
    )
    from pipework.service.daemon.registry import import_from_cwd  # noqa: PLC0415

    import_from_cwd()  # --tasks mytasks finds ./mytasks.py, as celery -A and rq worker do
    try:
        settings = load_settings(args.config, **settings_given(args, DaemonSettings))
    except ConfigError as exc:
        sys.stderr.write(f"pipework serve: {exc}\n")
        return 2
    logs.configure(settings.log_format, settings.log_level)
    return daemon.serve(settings, journal_recover=args.journal_recover)


def _client(args: argparse.Namespace) -> int:
    from pipework.service.cli import commands as control  # noqa: PLC0415

    as_json = args.json
    command = args.command
    action: Callable[..., int]
    if command == "submit":
        try:
            kwargs = json.loads(args.kwargs)
        except ValueError as exc:
            return _usage(f"pipework submit: --kwargs is not JSON: {exc}", as_json)
        if not isinstance(kwargs, dict):
            return _usage("pipework submit: --kwargs must be a JSON object", as_json)
        action = control.submit(
            args.task,
            [control.parse_arg(a) for a in args.args],
            kwargs,
            as_json=as_json,
            wait=args.wait,
            key=args.key,
            timeout=args.task_timeout,
            retries=args.retries,
            priority=args.priority,
            delay=args.delay,
        )
    elif command == "status" and args.task_id is None:
        from pipework.service.cli import overview  # noqa: PLC0415

        if args.watch is not None and not args.watch > 0:
            return _usage("pipework status: --watch needs a number of seconds above 0", as_json)
        action = overview.overview(as_json=as_json, watch=args.watch)
    elif command == "status":
        if args.watch is not None:
            return _usage(
                "pipework status: --watch redraws the overview; drop the task id", as_json
            )
        action = control.status(args.task_id, as_json=as_json)
    elif command == "result":
        action = control.result(args.task_id, wait=args.wait, as_json=as_json)
    elif command == "cancel":
        action = control.cancel(args.task_id, as_json=as_json)
    elif command == "list":
        action = control.list_tasks(args.state, args.limit, as_json=as_json)
    elif command == "stats":
        action = control.stats(as_json=as_json)
    elif command == "tasks":
        action = control.tasks(as_json=as_json)
    else:
        action = control.workers(as_json=as_json)
    return control.run_command(
        args.endpoint,
        args.timeout,
        action,
        keys=(args.secret_key, args.server_key),
        as_json=as_json,
    )


def _usage(message: str, as_json: bool) -> int:
    """A usage error: the message on stderr, and the error document on stdout with --json."""
    from pipework.service.cli import commands as control  # noqa: PLC0415

    sys.stderr.write(message + "\n")
    control.print_error("usage", message, None, as_json=as_json, out=sys.stdout)
    return control.EXIT_USAGE


def _demo(args: argparse.Namespace) -> int:
    if args.pool:
        from pipework.service.cli import demo_pool as demo  # noqa: PLC0415

        return demo.run()
    from pipework.service.cli import demo_daemon as daemon_demo  # noqa: PLC0415

    return daemon_demo.run()


_BENCH_MODULES = {"ipc": "ipc", "pool": "pool", "daemon": "queues"}
"""``pipework bench KIND`` runs ``pipework.benchmarks.<module>.run(quick=, docs=, json_path=)``."""


def _bench(args: argparse.Namespace) -> int:
    try:
        # Measuring code, and the peers it imports, load only for `bench`.
        module = importlib.import_module(f"pipework.benchmarks.{_BENCH_MODULES[args.kind]}")
    except ImportError as exc:
        sys.stderr.write(f"pipework bench: the benchmarks package is not installed ({exc})\n")
        return 2
    json_path = None if args.json is None else Path(args.json)
    code: int = module.run(quick=args.quick, docs=args.write_docs, json_path=json_path)
    return code


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "bench",
        help="measure, and print the tables (progress on stderr)",
        description=(
            "ipc: round-trip latency and echo bandwidth of each IPC mechanism in docs/ipc.md "
            "(multiprocessing Queue, Pipe, Manager, shared_memory, pickle 5, ZeroMQ over "
            "ipc:// and tcp://), each against one peer process in a fresh child. "
            "pool: WorkerService on each transport against ProcessPoolExecutor, "
            "multiprocessing.Pool, loky, pebble and mpire and the raw floors "
            "(docs/performance.md). daemon: pipework serve against the task queues people "
            "run instead (docs/performance.md). --quick is a smoke run of a few seconds."
        ),
    )
    p.add_argument("kind", choices=sorted(_BENCH_MODULES), help="what to measure")
    p.add_argument("--quick", action="store_true", help="a smoke run: few repeats, small sizes")
    p.add_argument(
        "--write-docs",
        action="store_true",
        help="also rewrite the generated tables of the kind's docs (docs/ipc*.md, "
        "docs/performance.md)",
    )
    p.add_argument("--json", metavar="FILE", help="also write every measurement here")
    p.set_defaults(handler=_bench)


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "serve",
        help="run the daemon",
        description=(
            "Serve docs/protocol.md on a ZeroMQ ROUTER. With no flags: an ipc:// socket in a "
            "private runtime directory, the SQLite journal on, a worker per core, the example "
            "tasks. Settings come from defaults < --config TOML < PIPEWORK_* variables < flags. "
            "SIGTERM/SIGINT drain (a second one stops at once); SIGHUP restarts the workers and "
            "reloads the CURVE allow-list."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="a TOML file of settings")
    from pipework.service.daemon.config import DaemonSettings  # noqa: PLC0415

    add_settings_flags(p, DaemonSettings, aliases={"journal_path": ["--journal"]})
    p.add_argument(
        "--journal-recover",
        action="store_true",
        help="if the journal fails its check at start (exit 4), keep the damaged files "
        "aside and start on a new journal of every task still readable",
    )
    p.set_defaults(handler=_serve)


def _add_curve_keys(parser: argparse.ArgumentParser, secret_help: str) -> None:
    """--secret-key / --server-key, defaulting to $PIPEWORK_SECRET_KEY / $PIPEWORK_SERVER_KEY."""
    parser.add_argument(
        "--secret-key",
        default=os.environ.get("PIPEWORK_SECRET_KEY"),
        metavar="FILE",
        help=f"{secret_help} ($PIPEWORK_SECRET_KEY)",
    )
    parser.add_argument(
        "--server-key",
        default=os.environ.get("PIPEWORK_SERVER_KEY"),
        metavar="FILE",
        help="the daemon's public NAME.key ($PIPEWORK_SERVER_KEY)",
    )


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoint",
        help="the daemon's endpoint (default: $PIPEWORK_ENDPOINT "
        "or the daemon's default ipc socket)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the daemon's reply (5)",
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    _add_curve_keys(common, "your CURVE NAME.key_secret, for a tcp:// daemon")

    p = commands.add_parser(
        "submit",
        parents=[common],
        help="enqueue a task",
        description="Enqueue TASK with ARGS (each parsed as JSON if it "
        "parses, else taken as a string).",
    )
    p.add_argument("task")
    p.add_argument("args", nargs="*")
    p.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword arguments")
    p.add_argument("--key", help="idempotency key (resubmitting it never runs the task twice)")
    p.add_argument("--task-timeout", type=float, metavar="S", help="seconds one run may take")
    p.add_argument("--retries", type=int, help="re-runs after its worker dies")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (-1000..1000)")
    p.add_argument("--delay", type=float, default=0.0, metavar="S", help="start no sooner")
    p.add_argument("--wait", type=float, metavar="S", help="also wait this long for the result")

    st = commands.add_parser(
        "status",
        parents=[common],
        help="the daemon at a glance, or a task's state",
        description="Without TASK_ID: the daemon at a glance (counters, workers and what each "
        "runs, the newest failures); with it: that task's state.",
    )
    st.add_argument("task_id", nargs="?", help="a task id (default: the overview)")
    st.add_argument("--watch", type=float, metavar="S", help="redraw the overview every S s")
    c = commands.add_parser("cancel", parents=[common], help="cancel a task")
    c.add_argument("task_id")
    r = commands.add_parser("result", parents=[common], help="wait for a task's outcome")
    r.add_argument("task_id")
    r.add_argument("--wait", type=float, default=30.0, metavar="S", help="how long (30)")
    ls = commands.add_parser("list", parents=[common], help="recent tasks")
    ls.add_argument(
        "--state",
        choices=[s.value for s in TaskState],
    )
    ls.add_argument("--limit", type=int, default=20)
    commands.add_parser("stats", parents=[common], help="the daemon's counters")
    commands.add_parser("workers", parents=[common], help="worker processes and their tasks")
    commands.add_parser(
        "tasks",
        parents=[common],
        help="the task names the daemon runs, with signatures",
        description="Ask the running daemon which task names it serves (its --tasks module), "
        "each with its signature and docstring's first line. It asks the daemon rather than "
        "importing a module here, so it shows what a submit can use; with no daemon it exits 3.",
    )
    for name in ("submit", "status", "cancel", "result", "list", "stats", "workers", "tasks"):
        commands.choices[name].set_defaults(handler=_client)


def _worker(args: argparse.Namespace) -> int:
    from pipework.service import logs  # noqa: PLC0415
    from pipework.service.daemon.registry import import_from_cwd  # noqa: PLC0415
    from pipework.service.remote_worker import (  # noqa: PLC0415
        RemoteWorker,
        RemoteWorkerError,
        WorkerSettings,
        worker_settings,
    )

    import_from_cwd()
    given = settings_given(args, WorkerSettings)
    for name in ("secret_key", "server_key"):  # as the client commands: flag, else variable
        variable = os.environ.get(f"PIPEWORK_{name.upper()}")
        if variable:
            given.setdefault(name, variable)
    try:
        settings = worker_settings(**given)
        logs.configure(settings.log_format, settings.log_level)
        worker = RemoteWorker(settings)
    except RemoteWorkerError as exc:
        sys.stderr.write(f"pipework worker: {exc}\n")
        return 2
    worker.install_signal_handlers()
    return worker.run()


def _add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pipework.service.remote_worker import WorkerSettings  # noqa: PLC0415

    p = commands.add_parser(
        "worker",
        help="serve a daemon's tasks from this host (a remote worker)",
        description=(
            "Connect to a daemon's worker endpoint and run its tasks in a local pool of "
            "SLOTS processes (docs/protocol.md, remote workers). Reconnects with backoff when "
            "the daemon goes away. tcp:// requires CURVE keys. SIGTERM/SIGINT or the daemon's "
            "stop: kill running tasks, say bye, exit 0 (a second signal exits at once)."
        ),
    )
    add_settings_flags(p, WorkerSettings)
    p.set_defaults(handler=_worker)


def _keys(args: argparse.Namespace) -> int:
    from pipework.service.cli import keys  # noqa: PLC0415

    try:
        public, secret = keys.generate(args.directory, args.name)
    except ValueError as exc:
        sys.stderr.write(f"pipework keys generate: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"pipework keys generate: {exc}\n")
        return 1
    sys.stdout.write(f"public key: {public}\nsecret key: {secret}\n")
    return 0


def _add_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("keys", help="CURVE key pairs for tcp:// endpoints")
    actions = p.add_subparsers(title="actions", dest="keys_action", required=True)
    g = actions.add_parser(
        "generate",
        help="write DIR/NAME.key (public, 0644) and DIR/NAME.key_secret (0600)",
        description=(
            "Write a new CURVE key pair: DIR/NAME.key (the public key: copy it to the daemon's "
            "allow-list directory, or to clients and workers for the daemon's own pair) and "
            "DIR/NAME.key_secret (keep it on this host). DIR is created with mode 0700; "
            "existing files are never overwritten."
        ),
    )
    g.add_argument("directory", metavar="DIR")
    g.add_argument("name", metavar="NAME")
    g.set_defaults(handler=_keys)


def build_parser() -> argparse.ArgumentParser:
    """The ``pipework`` argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="pipework",
        description="A process pool and task daemon that survives worker deaths.",
        epilog="Exit codes: 0 ok, 1 the task ended other than done, 2 usage, 3 no daemon "
        "answered, 4 error reply, 5 wait ran out, 130 interrupted. With --json, stdout gets "
        'one JSON document, errors included ({"ok": false, "error": {...}}).',
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    _add_serve(commands)
    _add_client_commands(commands)
    _add_worker(commands)
    _add_keys(commands)
    _add_bench(commands)
    demo_parser = commands.add_parser(
        "demo",
        help="start a daemon on its defaults and run a client against it",
        description=(
            "Start `pipework serve` on its embedded defaults, submit tasks to it as a client "
            "(results, a failure, a crash that is retried then quarantined, a cancel), print "
            "what each shows, and stop the daemon. Exits 1 if anything misbehaves."
        ),
    )
    demo_parser.add_argument(
        "--pool",
        action="store_true",
        help="instead, tour an in-process WorkerService surviving a kill, a retry, a timeout",
    )
    demo_parser.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``pipework`` command.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code (see ``service.cli.commands``): 0 on success, 2 for a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): report, don't exit
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
        if code and "--json" in (sys.argv[1:] if argv is None else argv):
            from pipework.service.cli.commands import print_error  # noqa: PLC0415

            print_error("usage", "bad arguments; see --help", None, as_json=True, out=sys.stdout)
        return code
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
