"""Which classes a class-conditional generator draws: the default feature net's counts in N samples.

Loads a ``lightning fit`` checkpoint of a conditional generative module (e.g. ``recipes/cgan.yaml``'s),
draws ``--samples`` images asking for each class in turn (``sample()``'s default labels, seeded), and
classifies them with the default feature net of the same embedded scenes (the one ``SampleQuality``
uses for ``val/cond_acc``). Prints, per asked class, how many of its samples the classifier gives to
each class, the counts per found class (a class that is never found has collapsed into another) and
the agreement.

    python benchmarks/gan_classes.py runs/cgan/version_0/checkpoints/last.ckpt --samples 1000
"""

import argparse

import torch

from lightning_seq.callbacks.quality import default_feature_net, load_feature_net
from lightning_seq.checkpointing import load_module, read_checkpoint
from lightning_seq.data import ImageDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = load_module(args.checkpoint)
    saved = read_checkpoint(args.checkpoint)["datamodule_hyper_parameters"]  # and Lightning's _class_path
    data = ImageDataModule(**{key: value for key, value in saved.items() if not key.startswith("_")})
    classifier = load_feature_net(default_feature_net(data))
    k = int(model.num_classes)
    names = classifier.classes or list(range(k))
    table = torch.zeros(k, k, dtype=torch.long)  # (asked, found)
    generator = torch.Generator().manual_seed(args.seed)
    for start in range(0, args.samples, args.batch):
        n = min(args.batch, args.samples - start)
        asked = (torch.arange(start, start + n) % k).to(model.device)
        images = data.to_unit(model.sample(n, labels=asked, generator=generator))  # (n, C, S, S) in [0, 1]
        found = classifier.features_and_logits(images.float())[1].argmax(1)  # (n,)
        table += torch.bincount(asked.cpu() * k + found.cpu(), minlength=k * k).view(k, k)

    width = max(len(str(name)) for name in names) + 2
    print(f"{'asked / found':>14} " + "".join(f"{n!s:>{width}}" for n in names))
    for i, name in enumerate(names):
        print(f"{name!s:>14} " + "".join(f"{int(c):>{width}}" for c in table[i]))
    print(f"{'found, all':>14} " + "".join(f"{int(c):>{width}}" for c in table.sum(0)))
    agreement = table.diag().sum().item() / table.sum().item()
    print(f"\nagreement with the asked class: {agreement:.1%} of {args.samples} samples")


if __name__ == "__main__":
    main()
