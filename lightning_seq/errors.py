"""The one exception type for bad user input, and the checks of settings that nets and layers share.

Raise :class:`InputError` for anything the user can fix: a missing file, an empty corpus, an
unknown option value. The message names the file or field, says what was expected and how to
fix it. The command line prints it as a single ``error:`` line and exits with status 2,
without a traceback.
"""


class InputError(ValueError):
    """A problem with user input (config values, files, data) that the user can fix."""


def check_positive(owner: str, **values: object) -> None:
    """An :class:`InputError` naming ``owner`` and the field for any value that is not an integer >= 1."""
    for field, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{owner}: {field}={value!r} is invalid; expected a positive integer.")


def check_choice(owner: str, field: str, value: object, choices: tuple[str, ...]) -> None:
    """An :class:`InputError` naming ``owner`` and ``field`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise InputError(
            f"{owner}: {field}={value!r} is not supported; expected one of {', '.join(choices)}."
        )
