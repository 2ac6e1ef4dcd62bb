"""The search layer: YAML spaces (validate, space, candidates, samplers), the grouped
Optuna/ASHA search (grouped), the Ray Tune sweep (driver, worker, resume, cluster, recorder)
and its replicates of each cell's selected point (replicates), docs/design.md §4.
"""
