"""The CPU stand-in for NCCL's device rule (tests/training/device_guard.py) tells host tensors apart."""

import pytest
import torch
import torch.distributed as dist

from .device_guard import HostTensorInCollective, VirtualDevice, on_host


def test_virtual_device_marks_host_tensors_and_patches_collectives():
    device = torch.device("cpu")
    with VirtualDevice(device) as guard:
        host = torch.tensor([1.0, 2.0])
        placed = torch.tensor([1.0, 2.0], device=device)
        assert on_host(host) and on_host(host.clone().float()) and on_host(torch.stack([host, host]))
        assert not on_host(placed) and not on_host(host.clone().to(device)) and not on_host(placed * 2)
        assert not on_host(torch.stack([host, placed])) and on_host(placed.cpu())
        assert not on_host(torch.empty_like(placed)) and on_host(torch.empty_like(host))
        with pytest.raises(HostTensorInCollective, match="NCCL"):
            dist.all_reduce(host)  # raises before reaching a (missing) process group
        with pytest.raises(HostTensorInCollective):
            dist.all_gather([placed, placed], host.clone())
        guard._check("all_reduce", placed)  # a device tensor passes
    assert dist.all_reduce.__name__ == "all_reduce"  # the collectives are restored
