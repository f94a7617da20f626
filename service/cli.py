"""The ``pipework`` command line: argument parsing only.

```
pipework demo      a few-second tour of WorkerService surviving worker deaths
```

Each subcommand hands off to the module that does the work (``service.demo``).
Also runnable as ``python -m service.cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from service import demo

__all__ = ["build_parser", "main"]


def _demo(_: argparse.Namespace) -> int:
    return demo.run()


def build_parser() -> argparse.ArgumentParser:
    """The ``pipework`` argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="pipework",
        description="A process pool and task daemon that survives worker deaths.",
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo",
        help="show a 2-worker pool surviving a killed worker, a retry and a timeout",
        description=(
            "Run a WorkerService with 2 workers through four scenes (a batch, a task "
            "that SIGKILLs its worker, a retried task, a timed-out task) and print "
            "what each shows. Exits 1 if any scene does not behave as described."
        ),
    )
    demo_parser.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``pipework`` command.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 2 for a usage error (as argparse does).
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
