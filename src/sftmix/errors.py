"""User-facing errors.

Every problem caused by input (a config, a data file, a missing model) is raised as a
``SftmixError`` whose message names the file, line or field and what was expected. The CLI prints
the message and exits non-zero, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SftmixError(Exception):
    """An error caused by the user's input, with a message meant to be read as is."""


def closest(name: str, valid: Iterable[str]) -> str:
    """A ' (did you mean X?)' hint for an unknown name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown(kind: str, name: str, valid: Iterable[str]) -> SftmixError:
    """Error for a name that is not registered: lists the valid names and the closest one."""
    valid = sorted(valid)
    return SftmixError(f"unknown {kind} {name!r}{closest(name, valid)}; valid: {', '.join(valid)}")
