"""``python -m pipework``: the ``pipework`` command line."""

from pipework.service.cli.parsing import main

raise SystemExit(main())
