"""The device-memory budget: modules not in use leave the device past it, least recently used
first; --lowvram sends each back after use. The accelerator is the meta device here (this
machine has no GPU): what is checked is where each module is, not what it computes."""

from __future__ import annotations

import torch

from nodes.loading.residency import Residency, nbytes

META = torch.device("meta")


def empty_move(module, device):
    module.to_empty(device=device)  # the weights' values do not matter to the policy


def where(*modules) -> list[str]:
    return [next(m.parameters()).device.type for m in modules]


def test_past_the_budget_the_least_recently_used_leave_the_device():
    a, b, c = (torch.nn.Linear(256, 256) for _ in range(3))  # 257 KiB each
    res = Residency(move=empty_move)
    res.configure({"vram_budget": 2.5 * nbytes(a) / 2**30})
    with res.use([a], META):
        pass
    with res.use([b], META):
        pass
    assert where(a, b, c) == ["meta", "meta", "cpu"]  # two fit the budget
    with res.use([c], META):
        assert where(a, b, c) == ["cpu", "meta", "meta"]  # a was used longest ago
    with res.use([a], META):
        assert where(a, b, c) == ["meta", "cpu", "meta"]
    with res.use([a, b, c], META):  # what one node needs stays, even past the budget
        assert where(a, b, c) == ["meta", "meta", "meta"]


def test_lowvram_keeps_a_module_on_the_device_only_while_it_runs():
    a = torch.nn.Linear(8, 8)
    res = Residency(move=empty_move)
    res.configure({"lowvram": True})
    with res.use([a], META):
        assert where(a) == ["meta"]
    assert where(a) == ["cpu"] and res.moves == 2


def test_on_the_cpu_or_without_a_budget_nothing_moves():
    a = torch.nn.Linear(8, 8)
    weight = a.weight.detach().clone()
    for options, device in (({"vram_budget": 1e-9}, torch.device("cpu")), ({}, META)):
        res = Residency(move=empty_move)
        res.configure(options)
        with res.use([a], device):
            assert where(a) == ["cpu"]
        assert res.moves == 0
    assert torch.equal(a.weight, weight)
