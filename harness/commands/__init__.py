"""One module per ``sopmoe`` subcommand, discovered by :mod:`harness.cli`.

A command module defines ``NAME``, ``HELP``, ``EXAMPLES`` (shown in ``sopmoe --help``), ``ORDER`` (position in
the help), ``add_arguments(parser)`` and ``run(args) -> int``. Flags whose ``dest`` is a dotted config key
(``dest="ensemble.foundation_weight"``) override the YAML automatically (see :func:`harness.cli.config_from_args`).
"""
