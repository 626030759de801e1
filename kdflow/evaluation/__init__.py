"""Metrics, CPU timing and the gates."""
