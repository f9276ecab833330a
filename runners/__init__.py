"""Stage runners: one module per stage kind, each run in its own process as
``python -m runners.<kind> SPEC.json`` (see runners/common.py for the contract).

Importing this package is light; torch and friends are imported inside each runner.
"""
