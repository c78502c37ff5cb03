"""Errors users see.

Every mistake a user can make (a bad YAML key, an unknown synset, a missing model, an unwritable
output folder) raises an `AugmentError` whose message says what was wrong and how to fix it.
The CLI prints the message on one line and exits 2; anything else is a bug and shows a traceback.
"""


class AugmentError(Exception):
    """A problem with the user's input or environment, described for a person."""


class SpecError(AugmentError):
    """The job spec (YAML) is malformed or has an invalid value."""


class TaxonomyError(AugmentError):
    """A concept source cannot be expanded (unknown synset, empty expansion, bad list file)."""


class ModelError(AugmentError):
    """A model or adapter cannot be found or does not fit the requested pipeline."""


class OutputError(AugmentError):
    """The output directory cannot be written or holds a run that conflicts with this one."""
