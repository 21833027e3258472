"""gan.sync_batchnorm: a DCGAN generator split over two gloo ranks computes what one process
computes on the whole batch: outputs, gradients and running statistics."""

from __future__ import annotations

import copy

import torch

from gangaps.models.dcgan import Generator
from gangaps.train.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm


def _worker(rank: int, init_file: str) -> None:
    import torch.distributed as dist

    from gangaps.train import distributed as ddp
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        alone = Generator(z_dim=8, width=0.125)
        split = convert_sync_batchnorm(copy.deepcopy(alone))
        plain = copy.deepcopy(alone)  # per-rank BatchNorm, as without the option
        assert sum(isinstance(m, SyncBatchNorm) for m in split.modules()) == 3
        assert split.state_dict().keys() == alone.state_dict().keys()
        g = torch.Generator().manual_seed(1)
        for _ in range(2):  # two steps: the running statistics follow the global batch
            z, w = torch.randn(12, 8, generator=g), torch.randn(12, 1, 28, 28, generator=g)
            mine = slice(6 * rank, 6 * rank + 6)  # this rank's share of the global batch
            ref = alone(z)
            (ref * w).sum().backward()
            out = split(z[mine])
            (out * w[mine]).sum().backward()  # the global loss is the sum of the ranks' parts
            plain(z[mine])
            assert torch.allclose(out, ref[mine], atol=1e-5), (out - ref[mine]).abs().max()
        for p, q in zip(split.parameters(), alone.parameters(), strict=True):
            grad = ddp.all_reduce_sum(p.grad.clone())
            rel = ((grad - q.grad).norm() / q.grad.norm()).item()  # float sums in other orders
            assert rel < 1e-5, rel
        stats = [k for k in alone.state_dict() if "running" in k]
        close = {k: [torch.allclose(net.state_dict()[k], alone.state_dict()[k], rtol=1e-5,
                                    atol=1e-6) for net in (split, plain)] for k in stats}
        assert all(synced for synced, _ in close.values()), close
        assert not any(own for _, own in close.values()), close  # a rank's share alone differs
        split.eval()  # inference: the running statistics, no collective
        assert torch.allclose(split(z[mine]), alone.eval()(z[mine]), atol=1e-5)
    finally:
        ddp.shutdown()


def test_split_batchnorm_equals_one_process_on_the_global_batch(tmp_path) -> None:
    import torch.multiprocessing as mp
    mp.spawn(_worker, args=(str(tmp_path / "init"),), nprocs=2)


def test_without_a_process_group_it_is_plain_batchnorm(one_thread) -> None:
    torch.manual_seed(0)
    alone = Generator(z_dim=8, width=0.125)
    synced = convert_sync_batchnorm(copy.deepcopy(alone))
    z = torch.randn(5, 8)
    assert torch.equal(synced(z), alone(z))
    assert all(torch.equal(a, b) for a, b in zip(synced.state_dict().values(),
                                                 alone.state_dict().values(), strict=True))
