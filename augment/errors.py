"""Errors users see.

Every mistake a user can make (a bad YAML key, an unknown synset, a missing model, an unwritable
output folder) raises an `AugmentError` whose message says what was wrong and how to fix it.
The CLI prints the message on one line and exits 2; anything else is a bug and shows a traceback.
"""

import math
from numbers import Integral, Real


class AugmentError(Exception):
    """A problem with the user's input or environment, described for a person."""


class SpecError(AugmentError):
    """The job spec (YAML) is malformed or has an invalid value."""


class SourceImageError(SpecError):
    """A source image cannot be decoded: the user's to replace, which a retry cannot help."""

    def __init__(self, message: str, source: str):
        super().__init__(message)
        self.source = source


class TaxonomyError(AugmentError):
    """A concept source cannot be expanded (unknown synset, empty expansion, bad list file)."""


class ModelError(AugmentError):
    """A model or adapter cannot be found or does not fit the requested pipeline."""


class OutputError(AugmentError):
    """The output directory cannot be written or holds a run that conflicts with this one."""


class ShardError(OutputError):
    """A committed Parquet shard cannot be read (truncated, overwritten, not Parquet)."""

    def __init__(self, path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(
            f"shard {path} cannot be read ({reason}); rerun `augment run` on this output to "
            "move it to quarantine/ and render its items again"
        )


class RequestError(AugmentError):
    """A request to the generation service that cannot be served as asked (HTTP `status`)."""

    def __init__(self, message: str, status: int = 400):
        self.status = status
        super().__init__(message)


def some_of(names: list[str], most: int) -> str:
    """The first `most` names, comma-separated, and "..." where there are more."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def first_line(exc: BaseException) -> str:
    """What a library exception says, on one line (its type name when it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def not_valid_yaml(source: object, exc: Exception) -> str:
    """'SOURCE, line N: not valid YAML: what is wrong', on one line (PyYAML's own text spans
    several, with the offending lines quoted)."""
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}" if mark else ""
    return f"{source}{where}: not valid YAML: {getattr(exc, 'problem', None) or first_line(exc)}"


def at_least(name: str, value, minimum, hint: str = "") -> None:
    """Raise `AugmentError` naming the setting when a number (or any in a list) is too small;
    an int `minimum` asks for whole numbers (a count), a float one for any number."""
    whole = isinstance(minimum, int)
    _check(name, value, lambda v: v >= minimum, f"at least {minimum:g}", hint, whole)


def above(name: str, value, bound, hint: str = "", finite: bool = False) -> None:
    """Raise `AugmentError` naming the setting when a number (or any in a list) is <= bound
    (or NaN); with `finite`, infinity too (a count made from it would not be one)."""

    def holds(v) -> bool:
        return v > bound and (not finite or math.isfinite(v))

    _check(name, value, holds, f"{'finite and ' if finite else ''}greater than {bound:g}", hint)


def between(name: str, value, low, high, hint: str = "") -> None:
    """Raise `AugmentError` naming the setting unless low < value < high (a fraction)."""
    _check(name, value, lambda v: low < v < high, f"between {low:g} and {high:g}", hint)


def flag(name: str, value) -> None:
    """Raise `AugmentError` unless `value` is True or False: a string such as "false" would
    count as true (and `force="false"` would delete a run)."""
    if not isinstance(value, bool):
        raise AugmentError(f"{name} must be True or False, got {value!r}")


def _check(name: str, value, holds, wanted: str, hint: str, whole: bool = False) -> None:
    values = list(value) if isinstance(value, list | tuple) else [value]
    kind = Integral if whole else Real
    numbers = [isinstance(v, kind) and not isinstance(v, bool) for v in values]
    if not all(numbers):
        got = ", ".join(repr(v) for v, number in zip(values, numbers, strict=True) if not number)
        a = "a whole number" if whole else "a number"
        raise AugmentError(f"{name} must be {a} {wanted}, got {got}{hint}")
    bad = [v for v in values if not holds(v)]
    if bad or not values:
        got = ", ".join(f"{v:g}" for v in bad)
        raise AugmentError(f"{name} must be {wanted}, got {got or 'nothing'}{hint}")


def as_list(value) -> list:
    """A setting that takes a list, given one value (`shots=10` for `shots=[10]`): that list."""
    return list(value) if isinstance(value, list | tuple) else [value]
