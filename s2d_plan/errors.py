"""One error hierarchy. Every error a user can cause is a S2DError; the CLI turns it into
a message and exit code 2 instead of a traceback."""

from __future__ import annotations


class S2DError(Exception):
    """Base of every error caused by user input (plans, graphs, SQL, data)."""

    exit_code = 2


class ConfigurationError(S2DError, ValueError):
    """A plan (or a registry override) is not valid."""


class PlanError(ConfigurationError):
    """A plan file has problems. ``problems`` holds one line per problem, each naming
    the field path and, where known, the YAML line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))


class GraphError(S2DError, ValueError):
    """A stage graph file cannot be run as it is."""


class InfeasibleError(S2DError):
    """No allocation fits the plan's budgets; the message says which and by how much."""


class HistoryError(S2DError):
    """A history query or store operation failed for a reason the user can fix."""


class IncompatibleModelsError(S2DError):
    """Teacher and student cannot be paired for token-level distillation."""
