"""Re-export of :mod:`search_spaces.errors` (the lowest layer owns them so every package can raise them)."""
from search_spaces.errors import TrialFailed, UserError, exit_on_error

__all__ = ["UserError", "TrialFailed", "exit_on_error"]
