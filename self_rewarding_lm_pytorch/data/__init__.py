"""Datasets and batching shared by the stages, and map-style datasets of dicts read by field name."""
