import pytest
import torch

from cnnlab import checkpoint
from cnnlab.errors import CheckpointError


def _state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt, {"model": model.state_dict(), "optim": opt.state_dict(), "state": {"step": 7, "best": None}}


def test_roundtrip_restores_optimizer_state_with_int_keys(tmp_path):
    _, opt, state = _state()
    checkpoint.save(tmp_path / "c.safetensors", state)
    loaded = checkpoint.load(tmp_path / "c.safetensors")
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(loaded["optim"])
    assert set(opt2.state_dict()["state"]) == {0, 1}
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert loaded["state"] == {"step": 7, "best": None}
    assert list(tmp_path.iterdir()) == [tmp_path / "c.safetensors"]  # no temporary files left behind


def test_corruption_is_detected_and_previous_used(tmp_path):
    path = tmp_path / "last.safetensors"
    _, _, state = _state()
    checkpoint.save(path, state, keep_previous=True)
    state["state"]["step"] = 8
    checkpoint.save(path, state, keep_previous=True)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip a bit in the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)
    with pytest.warns(UserWarning, match="using the previous checkpoint"):
        assert checkpoint.load_latest(path)["state"]["step"] == 7
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        checkpoint.load(path)


def test_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    torch.save({"x": Payload()}, path)
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    assert not marker.exists()


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "last.safetensors"
    _, _, state = _state()
    checkpoint.save(path, state, keep_previous=True)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    state["state"]["step"] = 99
    with pytest.raises(CheckpointError, match=r"cannot write \(No space left on device\); free disk space"):
        checkpoint.save(path, state, keep_previous=True)
    assert path.read_bytes() == before and checkpoint.load(path)["state"]["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no temporary file left
