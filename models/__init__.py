"""Keras CTR models for trigger-induced recommendation."""
