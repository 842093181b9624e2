"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback)."""


class PeftdsError(Exception):
    """A problem with the user's input (config, design, data, model): message names the culprit."""


class InfeasibleDesign(PeftdsError):
    """A design that cannot be realised for this model and budget (samplers redraw these)."""
