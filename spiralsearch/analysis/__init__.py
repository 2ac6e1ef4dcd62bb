"""The analysis layer: scaling-law fits (fitting, scaling, scaling_nd), the fit table
(fits), the HTML report (report) and attention probes (probes), docs/design.md §6-7.
"""
