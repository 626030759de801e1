"""Data contracts, the streaming scan, the GX suite, findings and the validation report.

contract      DataContract, FeatureSpec: YAML in and out, the lenient default
profile       a contract inferred from a scan of trusted reference data
column_stats  exact per-column statistics, updated one Arrow batch at a time
scan          SplitScan: one streaming pass over a split (statistics, row hashes, sample)
gx_suite      the contract as a GX Core suite, run on the sample, with Data Docs
gx_findings   a failed GX expectation as a Finding, with the scan's exact counts
findings      Finding, and the checks on the scan's counts within and across splits
text_checks   the checks of text columns: type, blanks, truncation, duplicates, leakage
report        ValidationReport: JSON, Markdown, the error that lists every failure
checks        validate_dataset, validate_frames, write_validated: the entry points
preflight     a run's settings checked against its data before any step starts
"""
