"""Two-process DDP on CPU (gloo) against one process with the same global batch: the same samples
at every step, hence the same final weights; the rank-zero callbacks (samples, image grids) run
without deadlocks."""

import json

import pytest
import torch
from clitools import CSV_ONLY, DDP, FEW_SAMPLES, REPO, ok

CHAR_LSTM, VIT = str(REPO / "recipes" / "char_lstm.yaml"), str(REPO / "recipes" / "vit.yaml")
VAE, PIXELCNN = str(REPO / "recipes" / "vae_conv.yaml"), str(REPO / "recipes" / "pixelcnn.yaml")
DDPM_COND, CAPTION = str(REPO / "recipes" / "ddpm_cond.yaml"), str(REPO / "recipes" / "caption.yaml")
SCENES = ["--data.init_args.num_train=512", "--data.init_args.num_val=64", "--data.init_args.num_test=64"]
STEPS = 12
COMMON = [f"--trainer.max_steps={STEPS}", "--trainer.val_check_interval=6", "--trainer.limit_val_batches=2",
          "--trainer.check_val_every_n_epoch=null", "--trainer.enable_progress_bar=false"]  # fmt: skip

# The state after the last step, in a folder of its own that both runs name alike.
FINAL = "--trainer.callbacks+=" + json.dumps({
    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
    "init_args": {"dirpath": "final", "filename": "final", "every_n_train_steps": STEPS, "save_top_k": -1},
})  # fmt: skip

CASES = {
    # Stream mode: B contiguous streams per process; DDP's 2 x B/2 streams are the same B streams,
    # each carrying its LSTM state across batches.
    "text-stream": [CHAR_LSTM, "--model.init_args.net.init_args.dropout=0", "--data.init_args.block_size=32"],
    # Window mode: shuffled windows; rank r takes every other window of the same permutation.
    "text-window": [CHAR_LSTM, "--model.init_args.net.init_args.dropout=0", "--data.init_args.mode=window",
                    "--data.init_args.block_size=32"],
    # Images, without random augmentation or stochastic depth (each rank draws its own numbers).
    "image": [VIT, "--model.init_args.net.init_args.drop_path=0", "--model.init_args.net.init_args.depth=2",
              "--data.init_args.augment={crop_scale: null, hflip: false}", "--data.init_args.num_train=512",
              "--data.init_args.num_val=64", "--data.init_args.num_test=64"],
    # A VAE: its reparameterisation noise and the dynamic binarisation are drawn per item and step, so
    # each rank draws the noise of its own items; the ELBO terms, active units and samples callbacks run.
    "vae": [VAE, "--model.init_args.net.init_args.preset=nano", "--model.init_args.kl_warmup_steps=6",
            *SCENES],
    # A gated PixelCNN: exact likelihood, dynamic binarisation; samples drawn on rank zero only.
    "pixelcnn": [PIXELCNN, "--model.init_args.net.init_args.preset=nano", *SCENES],
    # Class-conditional diffusion: timesteps, noise and label dropout drawn per item and step; the moving
    # average follows; FID/KID/cond_acc samples shared between the ranks (a feature net trained in seconds).
    # No random flips (each rank draws its own).
    "diffusion": [
        DDPM_COND, "--model.init_args.net.init_args.preset=nano", "--model.init_args.sample_steps=5",
        "--data.init_args.augment={crop_scale: null, hflip: false}",
        *FEW_SAMPLES, *SCENES,
    ],
    # A captioner: batch norm over the global batch in its encoder, the cross entropy per token of the
    # global batch (the ranks' captions differ in length), the caption of each image drawn per epoch;
    # the validation captions and attention maps are drawn on rank zero while both ranks score theirs.
    "caption": [
        CAPTION, "--model.init_args.net.init_args.preset=nano", "--data.init_args.train_size=192",
        "--data.init_args.val_size=32", "--data.init_args.test_size=16",
    ],
}  # fmt: skip


def _final_weights(cli, cwd, recipe_args: list[str], batch: int, *extra: str) -> dict[str, torch.Tensor]:
    recipe, *overrides = recipe_args
    cwd.mkdir()
    args = ["fit", "--config", recipe, "--config", CSV_ONLY, *COMMON, *overrides, *extra, FINAL]
    ok(cli(*args, f"--data.init_args.batch_size={batch}", cwd=cwd, timeout=600))
    state = torch.load(cwd / "final" / "final.ckpt", weights_only=True)
    assert state["global_step"] == STEPS
    return state["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes_with_half_batches_end_with_the_weights_of_one_process(cli, tmp_path, case):
    one = _final_weights(cli, tmp_path / "one", CASES[case], 16)
    two = _final_weights(cli, tmp_path / "two", CASES[case], 8, *DDP)
    assert one.keys() == two.keys()
    worst = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    print(f"{case}: largest weight difference {worst:.2e}")
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=f"{case}: {name}")
