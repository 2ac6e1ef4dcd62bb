"""The search layer: YAML spaces (validate, space, candidates, samplers), the grouped
Optuna/ASHA search (grouped), and the Ray Tune sweep (driver, worker, resume, cluster, recorder),
docs/design.md §4.
"""
