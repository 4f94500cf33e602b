"""CrossProcessBatchNorm in two real gloo processes equals plain batch norm over the whole batch:
outputs, input and parameter gradients, running statistics."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_seq.layers import CrossProcessBatchNorm, sync_batch_norm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 4, 4, generator=g) * 2 + 1, torch.randn(8, 3, 4, 4, generator=g)


def _reference() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3)
    nn.init.normal_(norm.weight)
    x, w = _batch()
    x.requires_grad_(True)
    y = norm(x)
    (y * w).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "dweight": norm.weight.grad, "dbias": norm.bias.grad,
            "mean": norm.running_mean, "var": norm.running_var}  # fmt: skip


def _rank(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3)
    nn.init.normal_(norm.weight)
    model = sync_batch_norm(nn.Sequential(norm))
    assert isinstance(model[0], CrossProcessBatchNorm)
    x, w = _batch()
    x, w = x[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True), w[rank * 4 : (rank + 1) * 4]
    y = model(x)
    (y * w).sum().backward()
    grads = [model[0].weight.grad.clone(), model[0].bias.grad.clone()]
    for g in grads:  # each rank's loss is its share of the one-process loss: the parameter grads sum
        dist.all_reduce(g)
    queue.put((rank, {"y": y.detach(), "dx": x.grad, "dweight": grads[0], "dbias": grads[1],
                      "mean": model[0].running_mean, "var": model[0].running_var}))  # fmt: skip
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_normalise_by_the_statistics_of_the_whole_batch():
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    procs = [context.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = _reference()
    for key in ("y", "dx"):
        torch.testing.assert_close(torch.cat([results[0][key], results[1][key]]), expected[key])
    for key in ("dweight", "dbias", "mean", "var"):
        torch.testing.assert_close(results[0][key], expected[key])
        torch.testing.assert_close(results[1][key], expected[key])


def test_outside_a_process_group_it_is_plain_batch_norm():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    ours = sync_batch_norm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(ours(x), plain(x))
    torch.testing.assert_close(ours.running_var, plain.running_var)
