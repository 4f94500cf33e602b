"""lightning_seq: PyTorch Lightning training for classic sequence and generative models.

Train from a recipe with ``lightning fit --config recipes/char_lstm.yaml``; see README.md.
"""

__version__ = "0.1.0"
