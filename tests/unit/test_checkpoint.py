
import pytest
import torch
from accelerate import Accelerator

from self_rewarding_lm_pytorch.storage.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint
from self_rewarding_lm_pytorch.storage.integrity import CorruptFileError


def test_checkpoint_of_a_prepared_model_loads_strictly_into_a_fresh_model(tmp_path, make_transformer):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(make_transformer(seed=1))
    save_checkpoint(accelerator, model, tmp_path / "stage.pt", stage=3)

    fresh = make_transformer(seed=2)
    extras = load_checkpoint(fresh, tmp_path / "stage.pt")
    assert extras == dict(stage=3)
    for (name, a), b in zip(accelerator.unwrap_model(model).state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_failed_write_leaves_no_file_that_looks_complete(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"

    def failing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"x": torch.ones(1)}, target)
    assert list(tmp_path.iterdir()) == []


def test_loading_refuses_pickled_code(tmp_path, make_transformer):
    torch.save(make_transformer(), tmp_path / "module.pt")  # a whole pickled Module, not a state dict
    with pytest.raises(Exception, match="[Ww]eights"):
        load_checkpoint(make_transformer(), tmp_path / "module.pt")


def test_missing_checkpoint_names_the_path(tmp_path, make_transformer):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(make_transformer(), tmp_path / "nothing.pt")


def garble(path, offset_fraction=0.5, length=1024):
    data = bytearray(path.read_bytes())
    start = int(len(data) * offset_fraction)
    data[start : start + length] = bytes(255 - b for b in data[start : start + length])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: garble(p, 0.6),  # 1 KB of garbled tensor bytes: torch's zip reader loads it without a word
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated
        lambda p: p.write_bytes(b""),  # empty
        lambda p: garble(p, 0.0, 64),  # garbled header
    ],
    ids=["garbled", "truncated", "empty", "header"],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, make_transformer, damage):
    accelerator = Accelerator(cpu=True)
    path = tmp_path / "stage.pt"
    save_checkpoint(accelerator, make_transformer(dim=64), path, stage=1)
    damage(path)
    with pytest.raises(CorruptFileError, match="stage.pt") as error:
        load_checkpoint(make_transformer(dim=64), path)
    assert "delete it" in str(error.value)


def test_a_file_without_checksum_is_refused(tmp_path, make_transformer):
    torch.save(dict(model=make_transformer().state_dict()), tmp_path / "plain.pt")
    with pytest.raises(CorruptFileError, match="plain.pt has no checksum"):
        load_checkpoint(make_transformer(), tmp_path / "plain.pt")
