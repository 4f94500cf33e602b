"""Run folders, `--ckpt_path last` and the batch script `lightning-seq submit` writes (no cluster needed)."""

from clitools import REPO, SMOKE, assert_one_error, ok

from lightning_seq.slurm import BODY

RECIPE = str(REPO / "recipes" / "char_lstm.yaml")


def test_submit_dry_run_takes_the_numbers_from_the_recipe_and_the_options(cli, tmp_path):
    fragment = tmp_path / "gpus.yaml"
    fragment.write_text("trainer: {devices: 4, num_nodes: 2, accelerator: gpu}\n")
    args = ["submit", "--config", RECIPE, "--config", str(fragment), "--time", "12:00:00",
            "--partition", "gpu", "--dry-run", "--model.init_args.optimizer.init_args.lr=0.001"]  # fmt: skip
    script = ok(cli(*args, cwd=tmp_path)).stdout
    lines = script.splitlines()
    for option in ("--job-name=char_lstm", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4",
                   "--time=12:00:00", "--partition=gpu", "--signal=USR1@90", "--requeue"):  # fmt: skip
        assert f"#SBATCH {option}" in lines, script
    assert "--trainer.accelerator=gpu --model.init_args.optimizer.init_args.lr=0.001" in script
    assert script.endswith(BODY + "\n")
    assert list((tmp_path / "runs" / "slurm").glob("char_lstm-*.sbatch"))  # kept as the record

    cpu = ok(
        cli("submit", "--config", RECIPE, "--nodes", "1", "--tasks-per-node", "2", "--dry-run", cwd=tmp_path)
    )
    assert "#SBATCH --ntasks-per-node=2" in cpu.stdout and "--gpus-per-node" not in cpu.stdout
    assert "--trainer.accelerator=cpu" in cpu.stdout


def test_submit_and_resume_name_what_is_missing(cli, tmp_path):
    missing = cli("submit", "--config", "recipes/nope.yaml", "--dry-run", cwd=tmp_path)
    assert_one_error(missing, "'recipes/nope.yaml' does not exist", "submit, missing recipe")
    last = cli("fit", "--config", RECIPE, "--config", SMOKE, "--ckpt_path", "last", cwd=tmp_path)
    assert_one_error(
        last, "--ckpt_path last: no run under 'runs/char_lstm' has a checkpoints/last.ckpt", "last"
    )
