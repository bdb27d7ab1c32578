"""3D "spatiospatial" branch: torchvision video ResNets on NIfTI volumes, one spatial axis as time."""
from spatiospatial.models import MODEL_NAMES, build_model, profile

__all__ = ["MODEL_NAMES", "build_model", "profile"]
