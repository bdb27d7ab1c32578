"""spatiospatial package."""
