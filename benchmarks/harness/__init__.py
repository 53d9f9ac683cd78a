"""What measures: child processes and workers, interleaving and paired ratios, targets, the report."""
