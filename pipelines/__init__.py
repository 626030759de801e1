"""Pipelines (the DAGs) and the kdflow command line."""
