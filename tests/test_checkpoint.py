import pytest
import torch
from accelerate import Accelerator

from self_rewarding_lm_pytorch.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint


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
