"""The memory budget: modules not in use leave the device past it, least recently used first;
--lowvram sends each back after use; on the CPU, modules with a file to read them again from
let their weights go instead. The accelerator is the meta device in the first tests (this
machine has no GPU): what is checked there is where each module is, not what it computes."""

from __future__ import annotations

import torch

from nodes.loading.residency import Residency, nbytes

META = torch.device("meta")
CPU = torch.device("cpu")


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


def test_without_a_budget_nothing_moves_nor_does_a_cpu_module_with_no_file():
    a = torch.nn.Linear(8, 8)
    weight = a.weight.detach().clone()
    res = Residency(move=empty_move)
    res.configure({"vram_budget": 1e-9})
    with res.use([a], torch.device("cpu")):
        assert where(a) == ["cpu"] and torch.equal(a.weight, weight)
    res.configure({})
    empty_move(a, META)  # loaded onto the device
    with res.use([a], META):
        assert where(a) == ["meta"]
    assert res.moves == 0


def test_unloading_moves_every_model_not_in_use_off_the_device_and_use_brings_it_back():
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    res = Residency(move=empty_move)
    for module in (a, b):
        empty_move(module, META)
        with res.use([module], META):
            pass
    with res.use([a], META):
        res.unload_all()
        assert where(a, b) == ["meta", "cpu"]  # a is in use: it stays
    res.unload_all()
    assert where(a, b) == ["cpu", "cpu"]
    with res.use([b], META):  # no budget: back where it computes
        assert where(a, b) == ["cpu", "meta"]


# --------------------------------------------------------------------------- the CPU budget


def _saved_net(folder, name, seed):
    """A small network saved to `folder/name` in float16, and one that rebuilds it from that
    file (in float16: the loaded network is widened to float32 after, as checkpoints are)."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    net[1].register_buffer("count", torch.tensor([seed]))
    path = folder / name
    save_file(net.half().state_dict(), str(path))

    def rebuild():
        fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
        fresh[1].register_buffer("count", torch.tensor([0]))
        fresh.half().load_state_dict(load_file(str(path)))
        return fresh.requires_grad_(False)

    return net.requires_grad_(False), rebuild, path


def _materialised(*modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules
               for t in [*m.parameters(), *m.buffers()] if not t.is_meta)  # fmt: skip


def test_on_the_cpu_the_budget_lets_go_of_weights_and_reads_them_again(tmp_path):
    (a, ra, pa), (b, rb, pb), (c, rc, pc) = (_saved_net(tmp_path, f"{n}.safetensors", i)
                                             for i, n in enumerate("abc"))  # fmt: skip
    res = Residency()
    for module, rebuild, path in ((a, ra, pa), (b, rb, pb), (c, rc, pc)):
        res.track(module, rebuild, path)
        module.float()  # placed for computing after loading: twice the bytes
    originals = {id(m): {k: v.clone() for k, v in m.state_dict().items()} for m in (a, b, c)}
    x = torch.randn(3, 64)
    expected = {id(m): m(x) for m in (a, b, c)}
    weight_a = a[0].weight  # the parameter objects stay the same: holders of them stay valid
    res.configure({"vram_budget": 2.5 * nbytes(a) / 2**30})
    for module in (a, b, c):
        with res.use([module], CPU):
            assert torch.equal(module(x), expected[id(module)])
            assert _materialised(a, b, c) <= res.budget
    assert where(a, b, c) == ["meta", "cpu", "cpu"]  # a was used longest ago
    assert _materialised(a, b, c) == 2 * nbytes(a)
    counts = res.releases, res.restores
    with res.use([a], CPU):  # read again from its file, exactly
        assert where(a, b, c) == ["cpu", "meta", "cpu"]
        assert all(torch.equal(v, originals[id(a)][k]) for k, v in a.state_dict().items())
        assert torch.equal(a(x), expected[id(a)]) and a[0].weight is weight_a
    assert (res.releases, res.restores) == (counts[0] + 1, counts[1] + 1)
    with res.present([b]):  # read where it is (given back first)
        assert torch.equal(b(x), expected[id(b)])
    with res.use([a, b, c], CPU):  # what one node needs stays, even past the budget
        assert where(a, b, c) == ["cpu", "cpu", "cpu"]
    res.configure({})  # no budget: everything given back
    assert where(a, b, c) == ["cpu", "cpu", "cpu"] and not res.released()


def test_a_module_with_no_file_to_read_again_stays(tmp_path):
    a, rebuild, path = _saved_net(tmp_path, "a.safetensors", 0)
    untracked = torch.nn.Linear(64, 64)
    res = Residency()
    res.configure({"vram_budget": 1e-9})
    res.track(a, rebuild, path)
    with res.use([untracked], CPU):
        pass
    with res.use([a], CPU):
        pass
    with res.use([untracked], CPU):
        assert where(a, untracked) == ["meta", "cpu"]
    with res.use([a], CPU):
        assert where(a, untracked) == ["cpu", "cpu"]  # untracked: nothing to read it again from


def test_a_file_changed_since_loading_is_said_when_its_weights_are_needed(tmp_path):
    import os

    import pytest

    from nodes.loading.residency import ModelFileChanged

    (a, ra, pa), (b, rb, pb) = (_saved_net(tmp_path, f"{n}.safetensors", i)
                                for i, n in enumerate("ab"))  # fmt: skip
    res = Residency()
    res.configure({"vram_budget": 1e-9})
    res.track(a, ra, pa)
    res.track(b, rb, pb)
    with res.use([a], CPU):
        pass
    with res.use([b], CPU):
        assert where(a) == ["meta"]
    stat = pa.stat()
    os.utime(pa, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ModelFileChanged, match="a.safetensors changed on disk"), res.use([a], CPU):
        pass
    with res.use([b], CPU):  # the others are still usable
        assert where(a, b) == ["meta", "cpu"]
