"""The ``pipework`` command line: argument parsing only.

```
pipework serve     run the daemon (docs/protocol.md) on embedded defaults or a config
pipework submit    enqueue a task            pipework result   wait for a task's outcome
pipework status    a task's state            pipework cancel   cancel a task
pipework list      recent tasks              pipework stats    the daemon's counters
pipework workers   worker processes          pipework demo     a daemon and a client, end to end
```

Each subcommand hands off to the module that does the work (``service.daemon``,
``service.control``, ``service.demo``); exit codes are listed in
``service.control``. Also runnable as ``python -m service.cli``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

__all__ = ["build_parser", "main"]


def _serve(args: argparse.Namespace) -> int:
    from service import daemon, logs  # noqa: PLC0415 - keep client commands light
    from service.config import ConfigError, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(
            args.config,
            endpoint=args.endpoint,
            tasks=args.tasks,
            workers=args.workers,
            transport=args.transport,
            journal=args.journal,
            journal_path=args.journal_path,
            journal_sync=args.journal_sync,
            retries=args.retries,
            task_timeout=args.task_timeout,
            drain_timeout=args.drain_timeout,
            result_ttl=args.result_ttl,
            max_message_bytes=args.max_message_bytes,
            log_format=args.log_format,
            log_level=args.log_level,
        )
    except ConfigError as exc:
        sys.stderr.write(f"pipework serve: {exc}\n")
        return 2
    logs.configure(settings.log_format, settings.log_level)
    return daemon.serve(settings)


def _client(args: argparse.Namespace) -> int:
    from service import control  # noqa: PLC0415

    as_json = args.json
    command = args.command
    action: Callable[..., int]
    if command == "submit":
        try:
            kwargs = json.loads(args.kwargs)
        except ValueError as exc:
            sys.stderr.write(f"pipework submit: --kwargs is not JSON: {exc}\n")
            return control.EXIT_USAGE
        if not isinstance(kwargs, dict):
            sys.stderr.write("pipework submit: --kwargs must be a JSON object\n")
            return control.EXIT_USAGE
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
    elif command == "status":
        action = control.status(args.task_id, as_json=as_json)
    elif command == "result":
        action = control.result(args.task_id, wait=args.wait, as_json=as_json)
    elif command == "cancel":
        action = control.cancel(args.task_id, as_json=as_json)
    elif command == "list":
        action = control.list_tasks(args.state, args.limit, as_json=as_json)
    elif command == "stats":
        action = control.stats(as_json=as_json)
    else:
        action = control.workers(as_json=as_json)
    return control.run_command(args.endpoint, args.timeout, action)


def _demo(args: argparse.Namespace) -> int:
    if args.pool:
        from service import demo  # noqa: PLC0415

        return demo.run()
    from service import daemon_demo  # noqa: PLC0415

    return daemon_demo.run()


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "serve",
        help="run the daemon",
        description=(
            "Serve docs/protocol.md on a ZeroMQ ROUTER. With no flags: an ipc:// socket in a "
            "private runtime directory, the SQLite journal on, a worker per core, the example "
            "tasks. Settings come from defaults < --config TOML < PIPEWORK_* variables < flags. "
            "SIGTERM/SIGINT drain (a second one stops at once); SIGHUP restarts the workers."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="a TOML file of settings")
    p.add_argument("--endpoint", help="ipc://PATH or tcp://HOST:PORT to bind")
    p.add_argument("--tasks", metavar="MODULE", help="module whose @task functions may run")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument("--transport", choices=["pipe", "queue", "zmq"], help="to local workers")
    j = p.add_mutually_exclusive_group()
    j.add_argument("--journal", dest="journal_path", metavar="PATH", help="journal file")
    j.add_argument(
        "--no-journal",
        dest="journal",
        action="store_const",
        const=False,
        help="keep tasks in memory only (lost when the daemon stops)",
    )
    p.add_argument("--journal-sync", choices=["full", "normal", "off"])
    p.add_argument("--retries", type=int, help="default re-runs after a worker dies (2)")
    p.add_argument("--task-timeout", type=float, metavar="S", help="default seconds per run")
    p.add_argument("--drain-timeout", type=float, metavar="S", help="SIGTERM deadline (30)")
    p.add_argument("--result-ttl", type=float, metavar="S", help="keep results this long")
    p.add_argument("--max-message-bytes", type=int, metavar="N", help="request size limit")
    p.add_argument("--log-format", choices=["auto", "json", "console"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=_serve, journal=None)


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

    for name, text in (("status", "a task's state"), ("cancel", "cancel a task")):
        c = commands.add_parser(name, parents=[common], help=text)
        c.add_argument("task_id")
    r = commands.add_parser("result", parents=[common], help="wait for a task's outcome")
    r.add_argument("task_id")
    r.add_argument("--wait", type=float, default=30.0, metavar="S", help="how long (30)")
    ls = commands.add_parser("list", parents=[common], help="recent tasks")
    ls.add_argument(
        "--state",
        choices=["queued", "running", "done", "failed", "cancelled", "timed_out", "quarantined"],
    )
    ls.add_argument("--limit", type=int, default=20)
    commands.add_parser("stats", parents=[common], help="the daemon's counters")
    commands.add_parser("workers", parents=[common], help="worker processes and their tasks")
    for name in ("submit", "status", "cancel", "result", "list", "stats", "workers"):
        commands.choices[name].set_defaults(handler=_client)


def build_parser() -> argparse.ArgumentParser:
    """The ``pipework`` argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="pipework",
        description="A process pool and task daemon that survives worker deaths.",
        epilog="Exit codes: 0 ok, 1 task not done, 2 usage, 3 no daemon answered, "
        "4 error reply, 5 wait ran out.",
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    _add_serve(commands)
    _add_client_commands(commands)
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
        The exit code (see ``service.control``): 0 on success, 2 for a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): report, don't exit
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
