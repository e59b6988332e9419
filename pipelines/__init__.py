"""Job types: validate a submission and expand it into tasks. Pure: no I/O beyond validation."""
