"""The command-line end of the tools: a user's mistake is a one-line message, not a traceback.

Library code raises, with a message that names the problem and its fix; it never ends the
process. A tool's ``__main__`` calls its ``main`` through :func:`run_main`, which prints the
message of a :data:`USER_ERRORS` exception as ``error: <message>`` on stderr and exits with
status 1 (what ``SystemExit(message)`` gives; argparse keeps 2 for a malformed command line).

:data:`USER_ERRORS` are what our checks raise for what the user gives: ``ValueError`` (a
config value, an argument, data that cannot be used: an unregistered or evaluated split, an
incomplete checkpoint, nothing to fit on), ``FileNotFoundError`` (a missing checkpoint, JSON or
dataset) and ``FileExistsError`` (an output that ``--force`` would overwrite). Everything else
keeps its traceback: ``KeyError``, ``TypeError`` and ``RuntimeError`` (stale calibrators
included) are more often bugs, or failures deep in a framework, than mistakes in a command.
"""

import sys

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
EXIT_STATUS = 1


def run_main(main, *args, **kwargs):
    """``main(*args, **kwargs)``; a :data:`USER_ERRORS` exception ends the process with its
    message on stderr and status :data:`EXIT_STATUS`, without a traceback."""
    try:
        return main(*args, **kwargs)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STATUS) from None
