"""Name globs as pgjit's API defines them: only ``*`` is a wildcard.

``?`` and ``[`` are ordinary characters in PostgreSQL names, so fnmatch's richer syntax would
turn legal names into patterns; matching is case-sensitive, as PostgreSQL identifiers are.
"""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=4096)
def _glob_regex(glob: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.DOTALL)


def glob_matches(glob: str, name: str) -> bool:
    """Whether ``name`` matches ``glob``, where ``*`` matches any run of characters."""
    return _glob_regex(glob).fullmatch(name) is not None
