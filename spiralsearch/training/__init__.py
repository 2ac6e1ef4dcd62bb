"""The training layer: matched budgets (budget.py) and the loop that trains one trial
(loop.py), docs/design.md §3.
"""
