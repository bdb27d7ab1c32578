"""experiment.batches and experiment.objectives: seeded, resumable, DDP-sharded training batches for 2D slices
and 3D volumes alike, and the one cross-entropy objective."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from capsule_classifier.data import SliceDataset
from datasets.augment import slice_augmentation, volume_augmentation
from experiment.batches import TrainBatches, eval_batches
from experiment.objectives import CrossEntropyObjective

LABELS = np.array([0] * 40 + [1] * 8 + [2] * 16)


def _slices(n: int = 64, size: int = 16) -> SliceDataset:
    images = np.random.default_rng(0).integers(0, 255, (n, size, size), dtype=np.uint8)
    return SliceDataset(images, LABELS[:n])


class Volumes(Dataset):
    """Volumes ``(1, T, H, W)`` whose voxels count up along W (a flip along W is visible), label = index % 3."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ramp = torch.arange(4, dtype=torch.float32).expand(1, 2, 3, 4) + 10 * index
        return ramp.clone(), torch.tensor(index % 3)


def _epoch(batches: TrainBatches, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(batches(epoch))


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_slices_epochs_are_seeded_and_a_resumed_epoch_is_identical() -> None:
    def batches() -> TrainBatches:
        return TrainBatches(_slices(), LABELS, batch_size=8, seed=3, key=2, augmentation=slice_augmentation())

    uninterrupted = batches()
    epochs = [_epoch(uninterrupted, e) for e in (1, 2, 3)]
    resumed = batches()  # a fresh process that starts at epoch 3
    assert _same(_epoch(resumed, 3), epochs[2])
    assert not _same(epochs[1], epochs[2])
    images, labels = epochs[0][0]
    assert images.shape == (8, 1, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
    plain = TrainBatches(_slices(), LABELS, batch_size=8, seed=3, key=2)
    order = plain.indices(1)[:8]
    assert torch.equal(_epoch(plain, 1)[0][0], torch.stack([plain.dataset[i][0] for i in order]))
    assert not torch.equal(images, _epoch(plain, 1)[0][0])  # augmented
    other_key = TrainBatches(_slices(), LABELS, batch_size=8, seed=3, key=1)
    assert not np.array_equal(other_key.indices(1), plain.indices(1))


def test_balanced_sampling_and_ddp_shards() -> None:
    balanced = TrainBatches(_slices(), LABELS, batch_size=8, seed=3, balanced=True)
    drawn = np.concatenate([balanced.indices(e) for e in range(1, 30)])
    assert np.allclose(np.bincount(LABELS[drawn], minlength=3) / drawn.size, 1 / 3, atol=0.05)  # despite 40/8/16
    ranks = [TrainBatches(_slices(), LABELS, 8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    shards = [r.indices(4) for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 32
    assert sorted(np.concatenate(shards).tolist()) == list(range(64))
    assert len(ranks[0]) == len(_epoch(ranks[0], 4)) == len(_epoch(ranks[1], 4)) == 4


def test_last_incomplete_batch_is_dropped_or_kept_and_uneven_ranks_are_padded() -> None:
    dropped = TrainBatches(_slices(20), LABELS[:20], batch_size=8, seed=0)
    assert [len(y) for _, y in dropped(1)] == [8, 8] and len(dropped) == 2
    kept = TrainBatches(_slices(20), LABELS[:20], batch_size=8, seed=0, drop_last=False)
    assert [len(y) for _, y in kept(1)] == [8, 8, 4] and len(kept) == 3
    ranks = [TrainBatches(_slices(7), LABELS[:7], 2, seed=0, rank=r, world_size=2, drop_last=False) for r in (0, 1)]
    assert [len(r.indices(1)) for r in ranks] == [4, 4] and [len(_epoch(r, 1)) for r in ranks] == [2, 2]
    with pytest.raises(ValueError, match="fewer than one batch"):
        TrainBatches(_slices(4), LABELS[:4], batch_size=8, seed=0)
    with pytest.raises(ValueError, match="labels for"):
        TrainBatches(_slices(4), LABELS[:5], batch_size=2, seed=0)


def test_volume_flips_are_seeded_per_epoch_and_rank_through_loader_workers() -> None:
    def batches(rank: int = 0, workers: int = 0) -> TrainBatches:
        return TrainBatches(Volumes(12), np.arange(12) % 3, batch_size=4, seed=5, augmentation=volume_augmentation(4),
                            rank=rank, world_size=2, num_workers=workers, drop_last=False)

    def flips(rank: int, epoch: int) -> torch.Tensor:
        """Which volumes of the epoch were flipped left-right (along W); checks the rest are untouched."""
        order = batches(rank).indices(epoch)
        drawn = _epoch(batches(rank), epoch)
        images, labels = torch.cat([x for x, _ in drawn]), torch.cat([y for _, y in drawn])
        originals = torch.stack([Volumes(12)[i][0] for i in order])
        flipped = torch.tensor([not torch.equal(a, b) for a, b in zip(images, originals, strict=True)])
        assert torch.equal(images[flipped], originals[flipped].flip(4))
        assert torch.equal(images[~flipped], originals[~flipped]) and labels.tolist() == (order % 3).tolist()
        return flipped

    first = _epoch(batches(), 1)
    assert [len(y) for _, y in first] == [4, 2]  # 6 of 12 volumes on this rank, last batch kept
    assert _same(first, _epoch(batches(workers=2), 1))  # loader worker processes change nothing
    assert _same(first, _epoch(batches(), 1))
    masks = {(rank, epoch): flips(rank, epoch) for rank in (0, 1) for epoch in (1, 2)}
    assert 0 < int(masks[0, 1].sum()) < 6
    assert not torch.equal(masks[0, 1], masks[0, 2]) and not torch.equal(masks[0, 1], masks[1, 1])


def test_eval_batches_keep_order_without_augmentation() -> None:
    images = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    batches = list(eval_batches(SliceDataset(images, np.arange(5) % 3), batch_size=2))
    assert [len(y) for _, y in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([x for x, _ in batches])[:, 0], torch.from_numpy(images).float() / 255)
    assert torch.cat([y for _, y in batches]).tolist() == [0, 1, 2, 0, 1]


def test_cross_entropy_objective_weighted_smoothed_and_probabilities() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.bfloat16)
    targets = torch.tensor([0, 2])
    loss, parts = CrossEntropyObjective().loss(logits, torch.zeros(2), targets)
    log_p = logits.float().log_softmax(1)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(-(log_p[0, 0] + log_p[1, 2]).item() / 2)
    assert parts == {"cross_entropy": pytest.approx(loss.item())}
    weighted, _ = CrossEntropyObjective(weight=torch.tensor([1.0, 1.0, 3.0])).loss(logits, None, targets)
    assert weighted.item() == pytest.approx(-(log_p[0, 0] + 3 * log_p[1, 2]).item() / 4)
    smoothed, _ = CrossEntropyObjective(label_smoothing=0.3).loss(logits, None, targets)
    assert smoothed.item() != pytest.approx(loss.item())
    objective = CrossEntropyObjective()
    assert objective.scores(logits) is logits
    probabilities = objective.probabilities(logits)
    assert torch.allclose(probabilities.sum(1), torch.ones(2)) and torch.equal(probabilities.argmax(1),
                                                                                 logits.argmax(1))
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyObjective(label_smoothing=1.0)
