"""The entry points of ``lightning``, ``lightning-seq`` and ``python -m lightning_seq``, light enough that
``lightning --help`` answers at once: torch, Lightning and the model families are imported (by
:mod:`lightning_seq.cli`) only when a command runs. This module imports nothing of the package.
"""

import sys

SUBCOMMANDS = ("fit", "validate", "test", "predict", "submit")
SUBCOMMAND_HELP = {
    "fit": "Train a recipe (resume with --ckpt_path last).",
    "validate": "Score a checkpoint on the validation split (--ckpt_path).",
    "test": "Score a checkpoint on the test split (--ckpt_path).",
    "predict": "Run a checkpoint on new inputs; writes predictions.jsonl beside it (--ckpt_path).",
    "submit": "Run a recipe as a Slurm batch job, on one node or several.",
}
DESCRIPTION = "lightning_seq: train sequence and generative models from YAML recipes."


def help_text(program: str) -> str:
    """The help of ``lightning --help``: the commands, each in one sentence, and where to read more."""
    commands = "\n".join(f"  {name:<10}{line}" for name, line in SUBCOMMAND_HELP.items())
    return f"""usage: {program} {{{",".join(SUBCOMMANDS)}}} --config RECIPE [options]

{DESCRIPTION}

commands:
{commands}

  {program} fit --config recipes/char_lstm.yaml                   train the first recipe to try
  {program} fit --config recipes/char_lstm.yaml --print_config    the whole config, every default
  {program} fit --help                                            the options of one command

options:
  -h, --help  Show this help and exit.

Recipes are in recipes/ (README.md, "Recipes"); a run writes to runs/<recipe>/version_N/.
"""


def _wants_help(argv: list[str]) -> bool:
    return argv in (["-h"], ["--help"])


def main(args: list[str] | None = None) -> int:
    """``lightning-seq`` and ``python -m lightning_seq``: see :func:`lightning_seq.cli.main`."""
    if _wants_help(sys.argv[1:] if args is None else args):
        print(help_text("lightning-seq"), end="")
        return 0
    from lightning_seq import cli

    return cli.main(args)


def lightning_main() -> int:
    """``lightning``: see :func:`lightning_seq.cli.lightning_main`."""
    if _wants_help(sys.argv[1:]):
        print(help_text("lightning"), end="")
        return 0
    from lightning_seq import cli

    return cli.lightning_main()
