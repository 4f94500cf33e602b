"""CrossProcessBatchNorm in two real gloo processes equals plain batch norm over the whole batch:
outputs, input and parameter gradients, running statistics. ClassConditionalBatchNorm is batch norm with
each class's own scale and shift."""

import subprocess
import sys

import torch
from torch import nn

from lightning_seq.layers import ClassConditionalBatchNorm, CrossProcessBatchNorm, sync_batch_norm

# Two ranks, each with half of one batch, in a script of their own (spawned processes must import the
# function they run, which pytest's importlib mode does not allow for a test module).
SCRIPT = """
import os, socket, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn
from lightning_seq.layers import CrossProcessBatchNorm, sync_batch_norm


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 4, 4, generator=g) * 2 + 1, torch.randn(8, 3, 4, 4, generator=g)


def rank_main(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3)
    nn.init.normal_(norm.weight)
    model = sync_batch_norm(nn.Sequential(norm))
    assert isinstance(model[0], CrossProcessBatchNorm)
    x, w = batch()
    x, w = x[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True), w[rank * 4 : (rank + 1) * 4]
    y = model(x)
    (y * w).sum().backward()
    grads = [model[0].weight.grad.clone(), model[0].bias.grad.clone()]
    for g in grads:  # each rank's loss is its share of the one-process loss: the parameter grads sum
        dist.all_reduce(g)
    torch.save({"y": y.detach(), "dx": x.grad, "dweight": grads[0], "dbias": grads[1],
                "mean": model[0].running_mean, "var": model[0].running_var}, f"{out}{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(port, sys.argv[1]), nprocs=2, join=True)
"""


def _reference() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3)
    nn.init.normal_(norm.weight)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 3, 4, 4, generator=g) * 2 + 1, torch.randn(8, 3, 4, 4, generator=g)
    x.requires_grad_(True)
    y = norm(x)
    (y * w).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "dweight": norm.weight.grad, "dbias": norm.bias.grad,
            "mean": norm.running_mean, "var": norm.running_var}  # fmt: skip


def test_two_processes_normalise_by_the_statistics_of_the_whole_batch(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "rank")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    expected = _reference()
    for key in ("y", "dx"):
        torch.testing.assert_close(torch.cat([results[0][key], results[1][key]]), expected[key])
    for key in ("dweight", "dbias", "mean", "var"):
        for result in results:
            torch.testing.assert_close(result[key], expected[key])


def test_outside_a_process_group_it_is_plain_batch_norm():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    ours = sync_batch_norm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(ours(x), plain(x))
    torch.testing.assert_close(ours.running_var, plain.running_var)


def test_class_conditional_batch_norm_is_batch_norm_with_each_class_s_scale_and_shift():
    torch.manual_seed(0)
    norm = ClassConditionalBatchNorm(3, num_classes=4)
    x, labels = torch.randn(6, 3, 2, 2) * 3 + 1, torch.tensor([0, 1, 2, 3, 1, 0])
    assert torch.equal(norm(x, labels), nn.BatchNorm2d(3, affine=False)(x))  # starts as plain batch norm
    nn.init.normal_(norm.gain.weight)
    nn.init.normal_(norm.shift.weight)
    plain = nn.functional.batch_norm(x, None, None, training=True)  # (6, 3, 2, 2)
    for i, c in enumerate(labels):
        expected = plain[i] * norm.gain.weight[c][:, None, None] + norm.shift.weight[c][:, None, None]
        torch.testing.assert_close(norm(x, labels)[i], expected)
    grads = torch.autograd.grad(norm(x, labels)[labels == 1].sum(), [norm.gain.weight, norm.shift.weight])
    assert all(g[[0, 2, 3]].abs().sum() == 0 and g[1].abs().sum() > 0 for g in grads)  # only class 1's rows
    assert isinstance(sync_batch_norm(norm).norm, CrossProcessBatchNorm)  # its statistics cross processes
