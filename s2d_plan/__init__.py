"""s2d-plan: spend scarce labels on sparse reward where exploration pays, and dense
teacher reward where behaviour must be compressed (the manual's science page)."""

__version__ = "0.1.0"
