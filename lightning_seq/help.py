"""The commands and their one-sentence help, for the entry points (:mod:`lightning_seq.commands`), which
print it without importing torch or Lightning, and for the CLI's parser. Imports nothing."""

SUBCOMMANDS = ("fit", "validate", "test", "predict", "submit")
SUBCOMMAND_HELP = {
    "fit": "Train a recipe (resume with --ckpt_path last).",
    "validate": "Score a checkpoint on the validation split (--ckpt_path).",
    "test": "Score a checkpoint on the test split (--ckpt_path).",
    "predict": "Run a checkpoint (--ckpt_path) on new inputs; writes the predictions beside it.",
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
