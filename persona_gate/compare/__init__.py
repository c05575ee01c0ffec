"""Checkpoint comparison: how far did fine-tuning move the persona, the refusal direction and
refusal? ``checkpoints`` computes (runs models); ``summary`` reads a saved comparison (no model).
"""
