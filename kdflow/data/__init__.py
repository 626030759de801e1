"""Data sources, the prepared-dataset folder, table reading and storage (local, s3://)."""
