"""Data layer: figshare slices (.mat folders or the prepared .npz bundle), grouped folds,
pickle shards of synthetic images, NIfTI volumes and MONAI-style transforms.
Imports no model package."""
