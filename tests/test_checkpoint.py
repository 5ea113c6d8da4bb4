import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import cnnlab
from cnnlab import outputs
from cnnlab.engine import checkpoint
from cnnlab.errors import CheckpointError, CnnlabWarning


def _state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt, {"model": model.state_dict(), "optim": opt.state_dict(), "state": {"step": 7, "best": None}}


def _save_format_1(path, tensors, state_json):
    """Write a checkpoint as cnnlab-checkpoint/1 did: the SHA-256 covers the tensors only."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].reshape(-1).view(torch.uint8).numpy().tobytes())
    meta = {"format": "cnnlab-checkpoint/1", "sha256": h.hexdigest(), "state": state_json}
    save_file(tensors, str(path), metadata=meta)


def _two_saves(path):
    """`path` at step 8 and its `.prev` at step 7, as a run leaves them."""
    _, _, state = _state()
    checkpoint.save(path, state, keep_previous=True)
    state["state"]["step"] = 8
    checkpoint.save(path, state, keep_previous=True)
    return state


def _flip_a_tensor_bit(path):
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))


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
    _two_saves(path)
    _flip_a_tensor_bit(path)
    raw = path.read_bytes()
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)
    with pytest.warns(CnnlabWarning, match=r"last.safetensors: checksum mismatch.*; using the previous checkpoint"):
        assert checkpoint.load_latest(path)["state"]["step"] == 7
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        checkpoint.load(path)


def test_header_state_is_covered_by_the_checksum(tmp_path):
    path = tmp_path / "last.safetensors"
    _, _, state = _state()
    checkpoint.save(path, state)
    raw = path.read_bytes()
    # The state is a JSON string inside the JSON header, hence the escaped quotes.
    assert raw.count(b'\\"step\\": 7') == 1
    path.write_bytes(raw.replace(b'\\"step\\": 7', b'\\"step\\": 6'))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)

    # A key deleted, or the format set back to 1 (whose checksum left the header out), by a rewrite.
    path.write_bytes(raw)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tree = json.loads(meta["state"])
    del tree["state"]["best"]
    for edited in ({**meta, "state": json.dumps(tree)}, {**meta, "format": "cnnlab-checkpoint/1"}):
        save_file(tensors, str(path), metadata=edited)
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            checkpoint.load(path)


def test_format_1_checkpoints_still_load(tmp_path):
    path = tmp_path / "old.safetensors"
    _save_format_1(path, {"s.w": torch.arange(6.0).reshape(2, 3)}, '{"w": {"__tensor__": "s.w"}, "step": 3}')
    loaded = checkpoint.load(path)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.arange(6.0).reshape(2, 3))
    _flip_a_tensor_bit(path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)

    shipped = sorted(Path(cnnlab.__file__).parent.glob("pretrained/*/checkpoints/best.safetensors"))
    assert shipped
    for best in shipped:
        assert "model" in checkpoint.load(best)


@pytest.mark.parametrize(
    "state_json",
    [
        '{"w": {"__tensor__": "s.w"}',  # not JSON
        '{"w": {"__tensor__": "s.gone"}}',  # a tensor that is not in the file
        '{"w": {"__tensor__": ["s.w"]}}',
        '{"opt": {"__items__": [[0]]}}',
        '{"opt": {"__items__": 5}}',
        '[{"__tensor__": "s.w"}]',  # not a dict
        None,  # no state at all
    ],
)
def test_malformed_state_is_a_checkpoint_error(tmp_path, state_json):
    # Written as format 1, whose checksum does not cover the state, so load gets to read it.
    path = tmp_path / "c.safetensors"
    tensors = {"s.w": torch.ones(2)}
    _save_format_1(path, tensors, state_json or "{}")
    if state_json is None:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        del meta["state"]
        save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=r"c.safetensors: malformed state in the header \(.*\); restore it"):
        checkpoint.load(path)


def test_both_checkpoints_damaged_names_both_and_what_to_do(tmp_path):
    path = tmp_path / "last.safetensors"
    _two_saves(path)
    _flip_a_tensor_bit(path)
    prev = path.with_suffix(".prev")
    prev.write_bytes(prev.read_bytes()[:100])
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_latest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: checksum mismatch")
    assert "last.prev: unreadable or truncated" in message
    assert message.endswith("restart the run with a new --out, or restore the files from a backup")
    assert "\n" not in message


def test_save_after_a_fallback_keeps_the_good_previous(tmp_path):
    path = tmp_path / "last.safetensors"
    state = _two_saves(path)
    _flip_a_tensor_bit(path)
    with pytest.warns(CnnlabWarning):
        assert checkpoint.load_latest(path)["state"]["step"] == 7
    state["state"]["step"] = 9
    checkpoint.save(path, state, keep_previous=True)  # must not rotate the corrupt file into .prev
    assert checkpoint.load(path.with_suffix(".prev"))["state"]["step"] == 7
    assert checkpoint.load(path)["state"]["step"] == 9
    state["state"]["step"] = 10
    checkpoint.save(path, state, keep_previous=True)  # a good one rotates as before
    assert checkpoint.load(path.with_suffix(".prev"))["state"]["step"] == 9


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
    path = tmp_path / "last.safetensors"
    _, _, state = _state()
    checkpoint.save(path, state, keep_previous=True)
    before = path.read_bytes()

    def full(self, data):
        with open(self, "wb") as f:
            f.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    state["state"]["step"] = 99
    with pytest.raises(CheckpointError, match=r"cannot write \(No space left on device\); free disk space"):
        checkpoint.save(path, state, keep_previous=True)
    monkeypatch.undo()
    assert path.read_bytes() == before and checkpoint.load(path)["state"]["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no temporary file left


@pytest.mark.parametrize(
    "error",
    [
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        OSError(errno.ENOSPC, "No space left on device"),  # what PIL and matplotlib raise
    ],
)
def test_a_failed_write_is_a_checkpoint_error_and_leaves_no_temp(tmp_path, error):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")

    def write(tmp):
        tmp.write_bytes(b"half a fig")
        raise error

    with pytest.raises(CheckpointError, match=r"figure.png: cannot write \(.*No space left on device.*\); free"):
        outputs.atomic_write(path, write)
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]

    def bug(tmp):
        raise ValueError("a bug, not a full disk")

    with pytest.raises(ValueError, match="a bug"):
        outputs.atomic_write(path, bug)
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


def test_remove_stale_temps_removes_only_atomic_write_leftovers(tmp_path):
    names = []
    outputs.atomic_write(tmp_path / "loss.png", lambda tmp: names.append(tmp.name) or tmp.write_bytes(b"png"))
    # Leftovers of killed writes, named as atomic_write names them, in the run folder and below.
    (tmp_path / "figures").mkdir()
    stale = [tmp_path / names[0], tmp_path / "figures" / names[0], tmp_path / "figures" / ".a.json.x_9abcde.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    kept = [
        tmp_path / "loss.png",
        tmp_path / ".hidden",
        tmp_path / ".cache.tmp",
        tmp_path / "notes.tmp",
        tmp_path / "figures" / ".a.json.ABCDEFGH.tmp",  # mkstemp never uses capitals
        tmp_path / "figures" / "a.json.abcdefgh.tmp",  # nor drops the leading dot
        tmp_path / "figures" / ".a.json.abcdefg.tmp",
    ]
    for p in kept[1:]:
        p.write_bytes(b"mine")
    (tmp_path / ".run.abcdefgh.tmp").mkdir()  # only files go
    assert outputs.remove_stale_temps(tmp_path) == 3
    assert not any(p.exists() for p in stale)
    assert all(p.is_file() for p in kept) and (tmp_path / ".run.abcdefgh.tmp").is_dir()
    assert outputs.remove_stale_temps(tmp_path) == 0
    assert outputs.remove_stale_temps(tmp_path / "absent") == 0
