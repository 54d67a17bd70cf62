"""Errors that tevo raises on bad input: one line, naming the problem and the valid choices."""


class TevoError(Exception):
    """Base class of tevo's own errors."""


class ConfigError(TevoError, ValueError):
    """An invalid configuration: the field, the bad value and the valid choices in one line."""

    def __init__(self, field: str, value=None, choices=None, why: str | None = None):
        msg = f"{field}: "
        msg += why if why else f"invalid value {value!r}"
        if choices is not None:
            ch = sorted(choices) if not isinstance(choices, str) else choices
            if not isinstance(ch, str):
                ch = ", ".join(map(str, ch)) if ch else "(none)"
            msg += f" (valid: {ch})"
        super().__init__(msg)
        self.field, self.value, self.choices = field, value, choices


class InputError(TevoError, ValueError):
    """Bad data handed to a model or tool at run time (token ids out of range, too long, ...)."""
