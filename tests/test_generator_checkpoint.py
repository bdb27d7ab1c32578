"""``generative_model.checkpoint``: ``generator.pt`` and the epoch checkpoints round-trip, and files of the wrong
kind, size, fold or architecture are refused with the file named (tiny networks, CPU, no data)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiment.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from generative_model.checkpoint import (
    ARCH_KEYS,
    build_generator,
    generator_arch,
    load_generator,
    load_training_checkpoint,
    save_generator,
    save_training_checkpoint,
)
from generative_model.conditions import CONDITION_CHANNELS
from generative_model.config import ConditionConfig, NetConfig
from generative_model.networks import define_D
from generative_model.pix2pix import Pix2Pix

CPU = torch.device("cpu")
SIZE = 32


def tiny_model(ngf: int = 4) -> tuple[Pix2Pix, dict]:
    arch = generator_arch(NetConfig(ngf=ngf), ConditionConfig(crop_size=SIZE), SIZE)
    model = Pix2Pix(generator=build_generator(arch), discriminator=define_D(input_nc=CONDITION_CHANNELS + 1, ndf=4),
                    lr=1e-3, beta1=0.5, gan_mode="vanilla", lambda_l1=100.0, epochs=1, epochs_decay=1, device=CPU)
    return model, arch


def test_generator_round_trip_and_refusals(tmp_path: Path) -> None:
    model, arch = tiny_model()
    assert set(arch) == ARCH_KEYS
    path = tmp_path / "generator.pt"
    save_generator(path, model.netG, arch, epoch=2, fold=3, folds_file="folds.json", data_fingerprint="abc")
    loaded, loaded_arch = load_generator(path, image_size=SIZE, fold=3, device=CPU)
    assert loaded_arch == arch and arch["erase_radius"] == ConditionConfig().erase_radius * SIZE / 128
    condition = torch.rand(1, CONDITION_CHANNELS, SIZE, SIZE)
    assert torch.equal(loaded.eval()(condition), model.netG.eval()(condition))
    with pytest.raises(CheckpointError, match=f"{path} paints 32 px"):
        load_generator(path, image_size=64, fold=3, device=CPU)
    with pytest.raises(CheckpointError, match=f"{path} was trained for fold 3, not fold 0"):
        load_generator(path, image_size=SIZE, fold=0, device=CPU)
    torch.save({"model": {}}, tmp_path / "classifier.pt")
    with pytest.raises(CheckpointError, match="classifier.pt holds no pix2pix generator"):
        load_generator(tmp_path / "classifier.pt", image_size=SIZE, fold=3, device=CPU)


def test_training_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    model, arch = tiny_model()
    for epoch in (1, 2, 3):
        save_training_checkpoint(tmp_path, model, arch, epoch=epoch, elapsed=10.0 * epoch, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.pt", "epoch-0003.pt"]
    newest = latest_checkpoint(tmp_path)
    restored, _ = tiny_model()
    assert load_training_checkpoint(newest, restored, arch) == (3, 30.0)
    for key, value in model.netD.state_dict().items():
        assert torch.equal(value, restored.netD.state_dict()[key])
    condition = torch.rand(1, CONDITION_CHANNELS, SIZE, SIZE)
    from_epoch, _ = load_generator(newest, image_size=SIZE, fold=5, device=CPU)  # epoch files name no fold
    assert torch.equal(from_epoch.eval()(condition), model.netG.eval()(condition))

    other, other_arch = tiny_model(ngf=8)
    with pytest.raises(CheckpointError, match=f"{newest} was trained with generator"):
        load_training_checkpoint(newest, other, other_arch)
    save_generator(tmp_path / "generator.pt", model.netG, arch, epoch=3, fold=0, folds_file=None,
                   data_fingerprint="abc")
    with pytest.raises(CheckpointError, match=r"generator.pt lacks \['D', .*not a pix2pix training checkpoint"):
        load_training_checkpoint(tmp_path / "generator.pt", restored, arch)
    assert set(load_checkpoint(tmp_path / "generator.pt")) == {"G", "arch", "epoch", "fold", "folds_file",
                                                              "data_fingerprint"}
