"""The README tells the truth: its commands are the ones CI runs, its recipes exist, its code runs."""

import itertools
import re
import subprocess

import torch
from clitools import RECIPES, REPO

README = (REPO / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
    marked = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```\n<!-- /test-command -->", README, re.S)
    assert marked, "the test command must sit between <!-- test-command --> markers"
    command = marked.group(1)
    assert "pip install -c constraints.txt" in command and command.rstrip().endswith("pytest")
    extracted = subprocess.run(
        ["bash", "-c", "sed -n '/<!-- test-command -->/,/<!-- \\/test-command -->/p' README.md "
         "| grep -v -e '^<!--' -e '^```'"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert extracted == command
    assert "<!-- test-command -->" in (REPO / ".ci" / "run").read_text()


def test_the_first_command_installs_and_trains_the_first_recipe_to_try():
    first = [b for b in bash_blocks() if "recipes/char_lstm.yaml" in b and "pip install" in b]
    assert len(first) == 1
    assert first[0].strip().endswith("lightning fit --config recipes/char_lstm.yaml")
    assert "first recipe to try" in README and "main job" not in README


def test_every_recipe_is_listed_with_a_measured_figure():
    for recipe in RECIPES:
        row = next((line for line in README.splitlines() if line.startswith(f"| `{recipe.name}`")), None)
        assert row, f"{recipe.name} missing from the README's recipe table"
        assert re.search(r"\d\.\d", row), f"no measured figure for {recipe.name}: {row}"
        assert not re.search(r"[A-Z]{3,}_[A-Z]+", row), f"placeholder left in: {row}"
        # a wall time with its date, beside the steps and what they trained on (the same on any machine)
        assert re.search(r"\| [\d,]+ .*\(\S+ \w+\) \| [\d.]+ min \(\d\d-\d\d\) \|$", row), row


def test_every_recipe_header_says_how_to_run_what_it_trains_and_reaches():
    for recipe in RECIPES:
        lines = recipe.read_text().splitlines()
        header = "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))
        assert f"lightning fit --config recipes/{recipe.name}" in header, recipe.name
        for word in ("Trains:", "Reaches:"):
            assert word in header, f"{recipe.name}: no '{word}' line"
        reaches = header[header.index("Reaches:") :].splitlines()[0]
        assert re.search(r"\d\.\d", reaches), f"{recipe.name}: no measured figure in {reaches!r}"


def python_block(containing: str) -> str:
    """The README's python code block that contains ``containing``."""
    return next(b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if containing in b)


def test_subclass_example_runs():
    code = python_block("class LabelSmoothedLM")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    from lightning_seq.nets import RNNLM

    model = namespace["LabelSmoothedLM"](RNNLM.from_preset("nano", 10), pad_id=0)
    tokens = torch.randint(1, 10, (2, 9))
    out = model._step(tokens, "val")
    assert out["num_tokens"] == 16 and torch.isfinite(out["loss"])


def test_new_objective_example_states_only_its_own_arguments():
    code = python_block("class MyObjective")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["MyObjective"](torch.nn.Linear(3, 1), temperature=2.0, warmup_steps=5)
    assert model.hparams.temperature == 2.0 and model.hparams.warmup_steps == 5
    assert torch.isfinite(model._step(torch.randn(4, 3), "train")["loss"])


def test_gan_example_builds_a_conditional_gan_that_samples():
    namespace: dict = {}
    exec(compile(python_block("GAN(net"), "README.md", "exec"), namespace)
    images = namespace["model"].sample(6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 3, 32, 32) and images.abs().max() <= 1


def test_diffusion_example_builds_a_guided_model_that_samples_and_shows_its_trajectory():
    namespace: dict = {}
    exec(compile(python_block("Diffusion(net"), "README.md", "exec"), namespace)
    images, frames = namespace["images"], namespace["frames"]
    assert images.shape == (12, 3, 16, 16) and images.abs().max() <= 1
    assert frames.shape == (8, 4, 3, 16, 16)
