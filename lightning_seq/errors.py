"""The one exception type for bad user input.

Raise :class:`InputError` for anything the user can fix: a missing file, an empty corpus, an
unknown option value. The message names the file or field, says what was expected and how to
fix it. The command line prints it as a single ``error:`` line and exits with status 2,
without a traceback.
"""


class InputError(ValueError):
    """A problem with user input (config values, files, data) that the user can fix."""
