"""``python -m lightning_seq fit --config recipes/char_lstm.yaml``."""

import sys

from lightning_seq.commands import main

if __name__ == "__main__":
    sys.exit(main())
