"""``python -m pipework``: the ``pipework`` command line."""

from pipework.service.cli.parsing import main

# The guard matters: under forkserver and spawn, multiprocessing imports the
# main module again (as __mp_main__) in its helper processes.
if __name__ == "__main__":
    raise SystemExit(main())
