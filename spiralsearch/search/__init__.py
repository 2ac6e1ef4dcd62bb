"""The search layer: YAML spaces (validate, space, candidates, samplers), the grouped
Optuna/ASHA search (grouped), the Ray Tune sweep (driver, worker, resume, cluster, recorder,
progress), what it checks before its first trial (preflight) and which sweep a YAML continues
(history), faults and interrupts (failures, interrupts), its replicates of each cell's
selected point (replicates), the trials' checkpoint folders and their pruning (checkpoints),
and re-training one stored trial exactly (rerun), docs/design.md §4.
"""
