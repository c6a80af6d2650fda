"""The filter strings of ltexp's MLflow run searches, written in one place.

Every search of the tracking store selects runs by their step (``ltexp.step``), their status,
and tags and params equal to a value; :func:`where` writes that filter, quoting names and
refusing values that would break out of a filter string.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ltexp import schema
from ltexp.errors import TrackingError

FINISHED = "FINISHED"
RUNNING = "RUNNING"
# a run that ended without finishing (FAILED or KILLED): what a command continues
ENDED_UNFINISHED = (FINISHED, RUNNING)


def where(
    step: schema.Step | None = None,
    *,
    status: str | None = None,
    not_status: Iterable[str] = (),
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """The filter of runs of ``step`` (any: None), with ``status`` (or none of ``not_status``),
    whose ``tags`` and ``params`` equal the values given."""
    parts = []
    if step is not None:
        parts.append(_equals("tags", schema.STEP, schema.Step(step).value))
    parts += [_equals("tags", key, value) for key, value in (tags or {}).items()]
    parts += [_equals("params", key, value) for key, value in (params or {}).items()]
    if status is not None:
        parts.append(f"attributes.status = '{status}'")
    parts += [f"attributes.status != '{s}'" for s in not_status]
    return " and ".join(parts)


def versions_of(registered_name: str, run_id: str | None = None) -> str:
    """The filter of a registered model's versions (those logged by ``run_id``, if given)."""
    parts = [f"name = '{_quoted(registered_name)}'"]
    if run_id is not None:
        parts.append(f"run_id = '{_quoted(run_id)}'")
    return " and ".join(parts)


def ltexp_models() -> str:
    """The filter of the registered models ltexp names (``ltexp-…``)."""
    return f"name LIKE '{schema.REGISTERED_PREFIX}%'"


def _quoted(text: str) -> str:
    if "'" in text:
        raise TrackingError(f"cannot search the store for {text!r}: it holds a quote")
    return text


def _equals(kind: str, key: str, value: Any) -> str:
    if "`" in key:
        raise TrackingError(f"cannot search the store for the key {key!r}: it holds a backtick")
    return f"{kind}.`{key}` = '{_quoted(str(value))}'"
