"""Run reports: static HTML with summary mosaics and masks."""
