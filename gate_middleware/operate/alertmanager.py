"""Prometheus Alertmanager's webhook notification: its shape, and what it
asks of a rollout.

The admin API's ``POST /alertmanager`` takes the JSON that Alertmanager's
``webhook_config`` receiver sends (format version ``"4"``)::

    {"version": "4", "groupKey": ..., "truncatedAlerts": 0, "status": "firing",
     "receiver": ..., "groupLabels": {...}, "commonLabels": {...},
     "commonAnnotations": {...}, "externalURL": ...,
     "alerts": [{"status": "firing", "labels": {...}, "annotations": {...},
                 "startsAt": ..., "endsAt": ..., "generatorURL": ...,
                 "fingerprint": ...}]}

``NOTIFICATION`` is its JSON Schema (the route's body in the OpenAPI
document), and ``check_notification`` holds a body to it, raising
``ConfigError`` that names the field (``alerts[0].status``). The top level
takes these keys and no others, as every admin route does; an alert may
carry more keys than these, which are ignored, so that a newer Alertmanager
does not get 400s it would retry forever.

An alert concerns a rollout when its label ``gate_rollout`` (``ROLLOUT_LABEL``;
the admin route's ``?label=`` names another) is the rollout's name: the
label the package's own metrics carry in Prometheus (``gate.rollout``), so a
rule that keeps it (``max by (gate_rollout) (...)``) names its rollout.
``alerts_about`` finds them; ``rollback_reason`` makes the reason a
rollback records from the firing ones: the first one's ``alertname`` and
its ``summary`` annotation, made one printable line that
``validate_reason`` takes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gate_middleware.domain.naming import MAX_REASON_LENGTH, UNPRINTABLE, validate_reason
from gate_middleware.errors import ConfigError

#: The label that names the rollout an alert is about.
ROLLOUT_LABEL = "gate_rollout"
#: A Prometheus label name, for JSON Schema (ECMA-262) and Python alike.
LABEL_NAME_PATTERN = "^[a-zA-Z_][a-zA-Z0-9_]*$"
_LABEL_NAME = re.compile(LABEL_NAME_PATTERN.strip("^$"))
#: Characters of the summary annotation kept in a rollback's reason.
MAX_SUMMARY = 200

_STATUS = {"type": "string", "enum": ["firing", "resolved"]}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_TEXT = {"type": "string"}
_ALERT = {
    "type": "object",
    "properties": {
        "status": _STATUS,
        "labels": _STRINGS,
        "annotations": _STRINGS,
        "startsAt": {**_TEXT, "description": "RFC 3339"},
        "endsAt": {**_TEXT, "description": "RFC 3339"},
        "generatorURL": _TEXT,
        "fingerprint": _TEXT,
    },
    "required": ["status", "labels"],
}
#: The body Alertmanager's webhook receiver sends, as a JSON Schema.
NOTIFICATION: dict[str, Any] = {
    "type": "object",
    "properties": {
        "version": {"type": "string", "enum": ["4"]},
        "groupKey": _TEXT,
        "truncatedAlerts": {"type": "integer", "minimum": 0},
        "status": _STATUS,
        "receiver": _TEXT,
        "groupLabels": _STRINGS,
        "commonLabels": _STRINGS,
        "commonAnnotations": _STRINGS,
        "externalURL": _TEXT,
        "alerts": {"type": "array", "items": _ALERT},
    },
    "required": ["version", "status", "alerts"],
    "additionalProperties": False,
}


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


_MISSING = _Missing()


def check_notification(body: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` naming the first field of ``body`` that does
    not hold to ``NOTIFICATION``."""
    _conform(body, NOTIFICATION, "")


def _conform(value: Any, schema: Mapping[str, Any], where: str) -> None:
    """The part of JSON Schema that ``NOTIFICATION`` uses: type, enum,
    minimum, properties, required, additionalProperties and items."""
    kind = schema.get("type")
    if "enum" in schema:
        if not isinstance(value, str) or value not in schema["enum"]:
            raise ConfigError(where, value, " or ".join(repr(v) for v in schema["enum"]))
    elif kind == "string":
        if not isinstance(value, str):
            raise ConfigError(where, value, "a string")
    elif kind == "integer":
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole or value < schema.get("minimum", value):
            raise ConfigError(where, value, "a whole number of at least 0")
    elif kind == "array":
        if not isinstance(value, list):
            raise ConfigError(where, value, "a JSON array")
        for index, item in enumerate(value):
            _conform(item, schema["items"], f"{where}[{index}]")
    elif kind == "object":
        _conform_object(value, schema, where)


def _conform_object(value: Any, schema: Mapping[str, Any], where: str) -> None:
    extra = schema.get("additionalProperties", True)
    if not isinstance(value, dict):
        expected = "a JSON object of strings" if isinstance(extra, dict) else "a JSON object"
        raise ConfigError(where or "body", value, expected)
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            _conform(_MISSING, properties[name], _at(where, name))
    for name, item in value.items():
        if name in properties:
            _conform(item, properties[name], _at(where, name))
        elif extra is False:
            raise ConfigError(_at(where, name), item, f"left out (not in {list(properties)})")
        elif isinstance(extra, dict):
            _conform(item, extra, _at(where, name))


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def valid_label_name(name: object) -> bool:
    """Whether ``name`` is a Prometheus label name."""
    return isinstance(name, str) and _LABEL_NAME.fullmatch(name) is not None


def alerts_about(
    notification: Mapping[str, Any], rollout: str, label: str = ROLLOUT_LABEL
) -> list[Mapping[str, Any]]:
    """The alerts of a checked notification whose ``label`` names ``rollout``."""
    return [alert for alert in notification["alerts"] if alert["labels"].get(label) == rollout]


def firing(alerts: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [alert for alert in alerts if alert["status"] == "firing"]


_NOT_ON_ONE_LINE = re.compile(rf"[\s{UNPRINTABLE}\ud800-\udfff]+")


def one_line(text: str, limit: int) -> str:
    """``text`` as one line of printable characters (each run of white space
    or refused characters one space), cut to ``limit`` characters with an ellipsis."""
    line = _NOT_ON_ONE_LINE.sub(" ", text).strip()
    if len(line) > limit:
        line = line[: limit - 1].rstrip() + "…"
    return line


def rollback_reason(alerts: list[Mapping[str, Any]]) -> str:
    """The reason a rollback for these firing alerts records: the first
    one's ``alertname`` and its ``summary`` annotation, then the other
    alert names (``validate_reason`` takes it)."""
    names = [one_line(alert["labels"].get("alertname", ""), 200) for alert in alerts]
    first = names[0] or "an Alertmanager alert"
    summary = one_line(alerts[0].get("annotations", {}).get("summary", ""), MAX_SUMMARY)
    reason = f"{first}: {summary}" if summary else first
    others = sorted({name for name in names[1:] if name and name != first})
    if others:
        reason += f" (also firing: {', '.join(others)})"
    return validate_reason(one_line(reason, MAX_REASON_LENGTH))


def client_note(notification: Mapping[str, Any]) -> str:
    """What the notification says of its sender: ``alertmanager`` and the
    receiver's name (kept beside the operator's name as the actor)."""
    receiver = notification.get("receiver", "")
    return f"alertmanager:{receiver}" if receiver else "alertmanager"
