"""Data contracts, the streaming scan, the GX suite, findings and the validation report."""
