"""Did-you-mean for names: the closest valid name, matched without regard to case first."""

from __future__ import annotations

import difflib
from typing import Iterable


def closest(word: object, options: Iterable[object]) -> str | None:
    options = [str(option) for option in options]
    word = str(word)
    by_case = {option.lower(): option for option in options}
    if word.lower() in by_case:  # train.LR → lr
        return by_case[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(by_case), n=1)
    return by_case[close[0]] if close else None


def did_you_mean(word: object, options: Iterable[object]) -> str:
    """`` (did you mean 'x'?)``, or `` (valid: a, b, c)`` when nothing is close ('' without options)."""
    options = [str(option) for option in options]
    found = closest(word, options)
    if found is not None:
        return f" (did you mean '{found}'?)"
    return f" (valid: {', '.join(options)})" if options else ""
