"""capsnet's tumour attention gate: it gates what the capsules see, its loss follows the masks, masks move with
the augmentation's geometric transforms, the gate is the model's explanation map, and a gated fold trains,
explains and exports end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_classifier_train import make_cfg

from capsule_classifier import build_model, build_objective, train
from capsule_classifier.capsnet import attention_loss
from capsule_classifier.data import SliceDataset
from capsule_classifier.deploy import ProbabilityModel, load_classifier
from capsule_classifier.explain import ATTENTION, CAM_LAYERS, explanation_layer, explanation_maps
from capsule_classifier.export import export, onnx_probabilities
from datasets.augment import RandAffine, RandCompose, RandFlip, RandGamma, slice_augmentation
from datasets.slices import load_slices
from experiment.batches import TrainBatches

SIZE = 32
STRIDE = 8

pytestmark = pytest.mark.usefixtures("one_thread")


def _gated(stride: int = STRIDE) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("capsnet", image_size=SIZE, attention=True, attention_stride=stride)


@pytest.mark.parametrize("stride", [4, 8])
def test_gate_output_shape_and_a_closed_gate_hides_the_input(stride: int) -> None:
    model = _gated(stride).train()  # batch statistics: an untrained network's eval-mode lengths are all ~0
    images = torch.rand(4, 1, SIZE, SIZE)
    with torch.no_grad():
        output = model(images)
        assert output["attention_logits"].shape == (4, 1, SIZE // stride, SIZE // stride)
        assert not torch.allclose(output["lengths"][0], output["lengths"][1], rtol=1e-3)
        model.attention[-1].bias.fill_(-100.0)  # a closed gate: the capsules see nothing of the input
        closed = model(images)["lengths"]
    assert torch.allclose(closed, closed[:1].expand_as(closed), atol=1e-6)
    assert "attention_logits" not in build_model("capsnet", image_size=SIZE)(images)
    with pytest.raises(ValueError, match="attention_stride"):
        build_model("capsnet", image_size=SIZE, attention=True, attention_stride=16)


def test_context_convolutions_widen_what_a_gate_cell_sees_and_keep_plain_gates_loadable() -> None:
    side, far = 64, (48, 48)  # cell (0, 0) of the stride-4 gate is centred near pixel (2, 2)
    images = torch.zeros(1, 1, side, side)
    poked = images.clone()
    poked[0, 0, far[0], far[1]] = 1.0
    for dilations, reaches in (((), False), ((2, 4, 8), True)):
        torch.manual_seed(0)
        model = build_model("capsnet", image_size=side, attention=True, attention_stride=4,
                            attention_dilations=dilations).eval()
        with torch.no_grad():
            moved = model(poked)["attention_logits"][0, 0, 0, 0] - model(images)["attention_logits"][0, 0, 0, 0]
        assert bool(moved.abs() > 1e-7) is reaches
    plain = [name for name in _gated(4).state_dict() if name.startswith("attention.")]
    assert plain == ["attention.0.0.weight", "attention.0.1.weight", "attention.0.1.bias",
                     "attention.0.1.running_mean", "attention.0.1.running_var", "attention.0.1.num_batches_tracked",
                     "attention.1.weight", "attention.1.bias"]  # the layout of gates trained before dilations
    with pytest.raises(ValueError, match="attention_dilations"):
        build_model("capsnet", image_size=SIZE, attention=True, attention_dilations=[0])


def test_attention_loss_rewards_the_gate_that_matches_the_mask() -> None:
    masks = torch.zeros(2, 1, SIZE, SIZE)
    masks[:, :, 4:10, 20:28] = 1.0
    grid = SIZE // STRIDE
    target = torch.nn.functional.adaptive_max_pool2d(masks, grid)
    right, wrong = 8 * (2 * target - 1), 8 * (1 - 2 * target)
    assert attention_loss(right, masks) < 0.1 < 1.5 < attention_loss(wrong, masks)
    objective = build_objective("capsnet", attention_weight=2.0)
    images, labels = torch.rand(2, 1, SIZE, SIZE), torch.tensor([0, 1])
    with torch.no_grad():
        output = _gated().train()(images)
    without, parts = objective.loss(output, images, labels)
    assert "attention" not in parts  # no masks in the batch (pretraining): no gate loss
    with_masks, parts = objective.loss(output, images, labels, masks)
    assert float(with_masks - without) == pytest.approx(2.0 * parts["attention"], rel=1e-4)


def test_masks_move_with_the_geometric_transforms_only() -> None:
    augmentation = RandCompose([RandFlip(prob=0.5), RandAffine(rotate_deg=20, scale=0.2, translate=0.1, prob=1.0),
                                RandGamma(prob=1.0)])
    masks = torch.zeros(8, 1, SIZE, SIZE)
    masks[:, :, 3:12, 18:30] = 1.0
    augmentation.reseed(0, 1)
    images, moved = augmentation.pair(masks.clone(), masks)
    assert not torch.equal(moved, masks)  # the masks were moved...
    augmentation.reseed(0, 1)
    alone = augmentation(masks.clone())
    assert torch.equal(images, alone)  # ...by the draws the images alone get
    geometric = RandCompose([RandFlip(prob=0.5), RandAffine(rotate_deg=20, scale=0.2, translate=0.1, prob=1.0)])
    geometric.reseed(0, 1)
    shapes, moved = geometric.pair(masks.clone(), masks)
    assert torch.allclose(shapes, moved, atol=1e-5)  # an image shaped like its mask stays shaped like it


def test_training_batches_carry_masks_through_the_augmentation() -> None:
    data = load_slices(None, SIZE)
    dataset = SliceDataset(data.images, data.labels, data.masks)
    batches = TrainBatches(dataset, data.labels, 16, seed=0, augmentation=slice_augmentation())
    images, labels, masks = next(iter(batches(1)))
    assert images.shape == masks.shape == (16, 1, SIZE, SIZE) and labels.shape == (16,)
    assert 0.0 <= float(masks.min()) and float(masks.max()) <= 1.0 and float(masks.sum()) > 0
    with pytest.raises(ValueError, match="do not match"):
        SliceDataset(data.images, data.labels, data.masks[:, :16])


def test_the_gate_is_the_explanation_map() -> None:
    model = _gated().eval()
    assert explanation_layer("capsnet", model) == ATTENTION
    assert explanation_layer("capsnet", build_model("capsnet", image_size=SIZE)) == CAM_LAYERS["capsnet"]
    images = load_slices(None, SIZE).images[::60]
    classifier = ProbabilityModel(model, build_objective("capsnet")).eval()
    maps, _ = explanation_maps(classifier, ATTENTION, images)
    assert maps.shape == images.shape and 0.0 <= maps.min() and maps.max() == 1.0
    with torch.no_grad():
        gate = model(torch.from_numpy(images[:, None] / 255.0).float())["attention_logits"].sigmoid()
    peaks = maps.reshape(len(maps), -1).argmax(1)
    cells = gate.flatten(1).argmax(1).numpy()
    side = SIZE // STRIDE  # each map peaks in the gate's most open cell
    assert np.array_equal((peaks // SIZE) // STRIDE * side + (peaks % SIZE) // STRIDE, cells)
    again, _ = explanation_maps(classifier, ATTENTION, images)
    assert np.array_equal(maps, again)


def test_a_gated_fold_learns_its_gate_explains_with_it_and_exports(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "fold=1", "+model.kwargs.attention=true", "+model.kwargs.attention_stride=4",
                   "+model.kwargs.attention_dilations=[2,4]", "train.epochs=3")
    summary = train.run(cfg)
    run_dir = Path(cfg.run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    gate_losses = [record["values"]["train_attention"] for record in records if record["kind"] == "scalars"]
    assert len(gate_losses) == 3 and gate_losses[-1] < gate_losses[0]
    explanations = json.loads((run_dir / "explanations.json").read_text())
    assert explanations["layer"] == ATTENTION and summary["trust"]["pointing_game"] == explanations["pointing_game"]
    classifier, meta = load_classifier(run_dir / "model.pt")
    assert meta["model_kwargs"]["attention"] is True and meta["model_kwargs"]["attention_dilations"] == [2, 4]
    assert classifier.model.attention is not None
    export(run_dir / "model.pt", tmp_path / "gated.onnx")
    images = load_slices(None, SIZE).images[:4]
    with torch.no_grad():
        expected = classifier(torch.from_numpy(images[:, None] / 255.0).float()).numpy()
    assert np.allclose(onnx_probabilities(tmp_path / "gated.onnx", images), expected, atol=1e-4)
