"""The router learning-rate group is chosen by what a module is, not by a parameter-name suffix."""

from torch import nn

from tsembed.moe import MoELoRAConfig, attach
from tsembed.moe.routers import RouterOwner, router_parameters


class _NotARouter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(4, 4)  # named like a router, but a plain layer of the model


def test_router_parameters_come_from_router_owners_only():
    model = nn.Sequential(nn.Linear(8, 8), _NotARouter())
    attach(model, MoELoRAConfig(target_modules=[r"^0$"], num_experts=3, rank=2, task_hints=["a", "b"]))
    params = router_parameters(model)
    layer = model[0]
    assert isinstance(layer, RouterOwner) and not isinstance(model[1], RouterOwner)
    assert [id(p) for p in params] == [id(layer.router.weight), id(layer.router_hint)]
    assert all(p is not model[1].router.weight for p in params)
