"""The daemon, ``pipework serve``: server loop, requests, scheduling, journal, remotes."""
