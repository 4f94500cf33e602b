"""The entry points of ``lightning``, ``lightning-seq`` and ``python -m lightning_seq``, light enough that
``lightning --help`` answers at once: torch, Lightning and the model families are imported (by
:mod:`lightning_seq.cli`) only when a command runs. Of the package, it imports only the help's text.
"""

import sys
from collections.abc import Callable
from importlib import metadata, util

from lightning_seq.help import SUBCOMMANDS, help_text


def _wants_help(argv: list[str]) -> bool:
    return argv in (["-h"], ["--help"])


def main(args: list[str] | None = None) -> int:
    """``lightning-seq`` and ``python -m lightning_seq``: the help, or :func:`lightning_seq.cli.main`."""
    if _wants_help(sys.argv[1:] if args is None else args):
        print(help_text("lightning-seq"), end="")
        return 0
    from lightning_seq import cli

    return cli.main(args)


def lightning_main() -> int:
    """The ``lightning`` command: ours, or the Lightning cloud CLI (``lightning-sdk``) for its commands.

    ``lightning-sdk`` installs a ``lightning`` command too. A first argument that is none of our
    subcommands (and no option) goes to it when it is installed; otherwise we show our help.
    """
    argv = sys.argv[1:]
    if _wants_help(argv):
        print(help_text("lightning"), end="")
        return 0
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        sdk = _lightning_sdk_cli()
        if sdk is not None:
            return sdk()
        print(help_text("lightning"), end="")
        print(
            f"error: unknown command '{argv[0]}'; expected one of {', '.join(SUBCOMMANDS)}.", file=sys.stderr
        )
        return 2
    return main()


def _lightning_sdk_cli() -> Callable[[], int] | None:
    """The entry point of the ``lightning-sdk`` package's CLI, when that package is installed."""
    if util.find_spec("lightning_sdk") is None:
        return None
    for entry in metadata.entry_points(group="console_scripts", name="lightning-sdk"):
        return entry.load()
    return None
