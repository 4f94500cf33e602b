"""ELBOLogging: the terms of a VAE's bound, its latent usage, and inputs beside their reconstructions.

Any module whose step returns these terms (as :class:`~lightning_seq.modules.VariationalAutoencoder`'s
does) gets:

* ``stage/elbo``, ``stage/recon`` and ``stage/kl``, in nats per image: every step in training, the
  epoch's mean over images and ranks in validation and test (``elbo = recon - kl``, with ``recon`` the
  expected ``log p(x|z)`` and ``kl`` the ``KL(q(z|x) || p(z))``);
* ``val/kl_dim/<j>``: the mean KL of latent dimension ``j`` over the validation set;
* ``val/active_units``: how many dimensions the posterior mean moves along across the data,
  ``A = #{j : Cov_x(E_q[z_j]) > threshold}`` (Burda et al., 2016), from sums over every validation
  image on every rank (all-reduced);
* every N epochs, a grid of the first validation images, each next to its reconstruction, saved to
  ``<run dir>/reconstructions/step_NNNNNN.png`` and logged to W&B as ``val/reconstructions``.

Prior samples are :class:`~lightning_seq.callbacks.ImageSamples`' (``val/samples``); put both in a recipe.
The same statistics of the test set are logged as ``test/kl_dim/<j>`` and ``test/active_units``.
"""

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from lightning_seq.callbacks.images import publish_grid, tile_grid, to_unit
from lightning_seq.errors import InputError

_TERMS = ("elbo", "recon", "kl")


class ELBOLogging(L.Callback):
    """Logs the ELBO's terms, the KL per latent dimension, the active units and reconstruction grids.

    The step's outputs hold ``elbo``, ``recon``, ``kl`` ``(B,)`` and, for the latent statistics,
    ``kl_per_dim`` and ``mu`` ``(B, Z)``; for the grid, ``inputs`` and ``reconstructions``
    ``(B, C, H, W)`` in the data's pixel convention.

    Args:
        every_n_epochs: draw the reconstruction grid after every this many epochs' validation.
        num_images: validation images in the grid (each beside its reconstruction).
        active_threshold: a dimension is active when the variance of its posterior mean over the data
            exceeds this (0.01 in Burda et al.).
        tile_size: each image is scaled up to about this many pixels a side.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 16,
        active_threshold: float = 0.01,
        tile_size: int = 64,
    ):
        for name, value in (("every_n_epochs", every_n_epochs), ("num_images", num_images)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"ELBOLogging.{name}: expected a positive integer, got {value!r}.")
        if not active_threshold >= 0:
            raise InputError(f"ELBOLogging.active_threshold: expected a value >= 0, got {active_threshold}.")
        if tile_size < 8:
            raise InputError(f"ELBOLogging.tile_size: expected at least 8, got {tile_size}.")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.active_threshold, self.tile_size = active_threshold, tile_size
        self._sums: dict[str, torch.Tensor] = {}  # this rank's sums over the stage's images
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # inputs, reconstructions
        self.last_grid: Image.Image | None = None  # the grid drawn last (on rank zero)
        self.active_units: int | None = None  # the last count, on every rank

    # -------------------------------------------------------------------------------- terms
    def _log_terms(self, pl_module: L.LightningModule, outputs, stage: str) -> torch.Tensor | None:
        if not isinstance(outputs, dict) or any(name not in outputs for name in _TERMS):
            raise InputError(
                f"ELBOLogging: {type(pl_module).__name__}'s {stage} step returned no "
                f"{'/'.join(_TERMS)} terms. Fix: return them from the step (as VariationalAutoencoder "
                "does), or remove the callback from the recipe."
            )
        train = stage == "train"
        size = outputs["elbo"].shape[0]
        for name in _TERMS:
            value = outputs[name].detach().float().mean()
            pl_module.log(
                f"{stage}/{name}", value, on_step=train, on_epoch=not train, sync_dist=not train,
                batch_size=size,
            )  # fmt: skip
        return outputs.get("mu")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._log_terms(pl_module, outputs, "train")

    # -------------------------------------------------------------------------------- latents
    def _start(self) -> None:
        self._sums = {}

    def _accumulate(self, outputs: dict) -> None:
        """Add the batch's sums: KL per dimension, posterior means and their squares (float64)."""
        if "mu" not in outputs or "kl_per_dim" not in outputs:
            return
        mu, kl = outputs["mu"].detach().double(), outputs["kl_per_dim"].detach().double()  # (B, Z)
        batch = {"count": torch.tensor(float(mu.shape[0]), dtype=torch.float64, device=mu.device)}
        batch.update(kl=kl.sum(0), mu=mu.sum(0), mu2=mu.square().sum(0))  # (Z,) each
        for key, value in batch.items():
            self._sums[key] = self._sums[key] + value if key in self._sums else value

    def _log_latents(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Log the mean KL per dimension and the active units from the sums over all ranks."""
        if not self._sums:
            return
        sums = {key: trainer.strategy.reduce(value, reduce_op="sum") for key, value in self._sums.items()}
        self._sums = {}
        count = sums["count"]
        mean = sums["mu"] / count  # (Z,)
        variance = (sums["mu2"] / count - mean.square()).clamp(min=0)  # (Z,) Cov_x(E_q[z_j])
        self.active_units = int((variance > self.active_threshold).sum())
        for j, kl in enumerate((sums["kl"] / count).tolist()):
            pl_module.log(f"{stage}/kl_dim/{j}", kl, sync_dist=False)
        pl_module.log(f"{stage}/active_units", float(self.active_units), sync_dist=False)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._log_terms(pl_module, outputs, "val")
        self._accumulate(outputs)
        if batch_idx == 0 and dataloader_idx == 0 and self._drawing(trainer):
            self._keep(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log_terms(pl_module, outputs, "test")
        self._accumulate(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_latents(trainer, pl_module, "val")
        if self._pending is not None:
            self.draw(trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_latents(trainer, pl_module, "test")

    # -------------------------------------------------------------------------------- grids
    def _drawing(self, trainer: L.Trainer) -> bool:
        """Whether this validation run draws: not the sanity check; every N epochs; rank zero."""
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return due and not trainer.sanity_checking and trainer.is_global_zero

    def _keep(self, outputs: dict) -> None:
        if "inputs" in outputs and "reconstructions" in outputs:
            n = self.num_images
            inputs, recons = outputs["inputs"][:n], outputs["reconstructions"][:n]
            self._pending = (inputs.detach().cpu(), recons.detach().cpu())

    @rank_zero_only
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Image.Image | None:
        """Save and log the kept inputs beside their reconstructions (rank zero)."""
        if self._pending is None:
            return None
        inputs, recons = (to_unit(trainer, pl_module, images) for images in self._pending)
        self._pending = None
        grid = reconstruction_grid(inputs, recons, self.tile_size)
        publish_grid(trainer, grid, "reconstructions", "val/reconstructions", "input | reconstruction")
        self.last_grid = grid
        return grid


def reconstruction_grid(
    inputs: torch.Tensor, reconstructions: torch.Tensor, tile_size: int = 64
) -> Image.Image:
    """Pairs ``input | reconstruction`` side by side, about ``sqrt(N)`` pairs a row.

    Args:
        inputs: ``(N, C, H, W)`` in [0, 1].
        reconstructions: the same shape.
        tile_size: each image is scaled up to about this many pixels a side.
    """
    n = inputs.shape[0]
    pairs = torch.stack([inputs.float(), reconstructions.float()], dim=1)  # (N, 2, C, H, W)
    tiles = pairs.flatten(0, 1)  # (2N, C, H, W): input 0, reconstruction 0, input 1, ...
    cols = 2 * max(1, round(n**0.5))
    return tile_grid(tiles, cols=min(cols, 2 * n), tile_size=tile_size)
