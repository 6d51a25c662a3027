"""Compare and report: check measured gradients against derived bounds; write the report."""
