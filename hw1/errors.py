"""The one exception type the command-line tools turn into a one-line message."""


class UserError(Exception):
    """A problem with the user's input (a file, a folder, a flag), not a bug.

    Scripts print ``error: <message>`` and exit with status 2 instead of a traceback, so the
    message must name the file and the problem on its own.
    """
