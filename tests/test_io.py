"""Checkpoints: full state round-trips through safetensors + JSON, and loading runs no code."""

from __future__ import annotations

import torch

from gangaps.io import atomic_write_json, load_state, read_json, save_state


def test_optimizer_and_rng_state_round_trip(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(8, 4)).sum().backward()
    opt.step()
    state = {"net": net.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
             "step": 7, "pair": (1, "a"), "nothing": None}
    save_state(tmp_path / "c.safetensors", state)
    back = load_state(tmp_path / "c.safetensors")
    assert back["step"] == 7 and back["pair"] == (1, "a") and back["nothing"] is None
    assert torch.equal(back["rng"], state["rng"])
    for k, v in state["net"].items():
        assert torch.equal(back["net"][k], v)
    opt2 = torch.optim.Adam(net.parameters(), lr=1e-3)
    opt2.load_state_dict(back["opt"])  # int-keyed optimizer state survives JSON
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_checkpoint_is_not_a_pickle(tmp_path):
    save_state(tmp_path / "c.safetensors", {"w": torch.ones(2)})
    head = (tmp_path / "c.safetensors").read_bytes()[:16]
    assert not head.startswith(b"\x80")  # pickle protocol marker
    assert not head.startswith(b"PK")  # torch.save zip archive


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
