"""The ``pipework`` command line: parsing, client commands, overview, keys, demos."""
