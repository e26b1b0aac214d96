"""Request-level parameters, which Laminar takes none of.

Triton's HTTP generate endpoint turns every top-level JSON key that names no input into a request
parameter, so a misspelled key (`max_token`, `temprature`) would otherwise be dropped without a
word and the request served with defaults. Any parameter is therefore refused, naming the key and
the input it probably meant. `id` is the one exception: HTTP generate reads it as the request id
and hands it on as a parameter as well.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Iterable

from laminar.serving.request_parsing import RequestError


def check_no_parameters(parameters_json: str, inputs: Iterable[str]) -> None:
    """`parameters_json` is what `request.parameters()` returns; raises RequestError on any key."""
    try:
        keys = sorted(set(json.loads(parameters_json or "{}")) - {"id"})
    except (ValueError, RecursionError):
        raise RequestError("request parameters are not valid JSON") from None
    if not keys:
        return
    names = sorted(inputs)
    hints = [f"{key!r}" + "".join(f" (did you mean {m!r}?)" for m in difflib.get_close_matches(key, names, 1))
             for key in keys]
    raise RequestError(f"unknown request key(s): {', '.join(hints)}; the keys a request may carry are "
                       f"the model's inputs: {', '.join(names)}")
