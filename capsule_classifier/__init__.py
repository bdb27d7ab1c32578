"""capsule_classifier package."""
