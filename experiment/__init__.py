"""Machinery shared by every training entry point: run directories, seeding, devices,
atomic checkpoints, metrics and monitoring. Imports no model package."""
