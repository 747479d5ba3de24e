"""Pydantic validation errors as the error events the real API sends: its codes, and `param` as a dotted path."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from protocol import JsonDict, ProtocolError

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a decimal",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


# Fields that take an object as well as the strings listed: the message names it too.
_ALSO_SUPPORTED = {
    "session.truncation": "an object of type 'retention_ratio'",
    "session.tracing": "an object with 'workflow_name', 'group_id' and 'metadata'",
}


def validation_error(exc: ValidationError, data: JsonDict, event_id: str | None) -> ProtocolError:
    errors = exc.errors(include_url=False)
    # Prefer the most specific error: unknown or missing fields before the alternatives of a union.
    order = {"extra_forbidden": 0, "missing": 1, "union_tag_invalid": 2, "union_tag_not_found": 2}
    error = min(errors, key=lambda err: order.get(err["type"], 3))
    param = _param_path(data, error["loc"])
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return ProtocolError(f"Unknown parameter: '{param}'.", "unknown_parameter", param, event_id)
    if kind == "missing":
        return ProtocolError(f"Missing required parameter: '{param}'.", "missing_required_parameter", param, event_id)
    if kind == "union_tag_not_found":
        param = f"{param}.type" if param else "type"
        return ProtocolError(f"Missing required parameter: '{param}'.", "missing_required_parameter", param, event_id)
    if kind == "union_tag_invalid":
        tag = value.get("type") if isinstance(value, dict) else value
        param = f"{param}.type" if param else "type"
        if not isinstance(tag, str):
            return invalid_type(param, "a string", tag, event_id)
        expected = error.get("ctx", {}).get("expected_tags", "")
        return ProtocolError(
            f"Invalid value: '{clip(tag)}'. Supported values are: {expected}.", "invalid_value", param, event_id
        )
    if kind in ("literal_error", "enum"):
        expected = error.get("ctx", {}).get("expected", "")
        textual = all(not option.lstrip("-").isdigit() for option in _literal_options(expected))
        if textual and not isinstance(value, str):
            return invalid_type(param, "a string", value, event_id)
        if param in _ALSO_SUPPORTED:
            expected = f"{expected.replace(' or ', ', ')} or {_ALSO_SUPPORTED[param]}"
        return ProtocolError(
            f"Invalid value: '{clip(value)}'. Supported values are: {expected}.", "invalid_value", param, event_id
        )
    bounds = {
        "less_than_equal": ("above maximum value", "<=", "le"),
        "less_than": ("above maximum value", "<", "lt"),
        "greater_than_equal": ("below minimum value", ">=", "ge"),
        "greater_than": ("below minimum value", ">", "gt"),
    }
    if kind in bounds:
        words, op, ctx_key = bounds[kind]
        limit = error.get("ctx", {}).get(ctx_key)
        number = "integer" if isinstance(limit, int) and isinstance(value, int) else "decimal"
        code = f"{number}_{words.split()[0]}_{'max' if op.startswith('<') else 'min'}_value"
        return ProtocolError(
            f"Invalid '{param}': {number} {words}. Expected a value {op} {limit}, but got {value} instead.",
            code,
            param,
            event_id,
        )
    if kind in ("string_too_short", "string_too_long"):
        limit = error.get("ctx", {}).get("min_length" if kind == "string_too_short" else "max_length")
        which = "below minimum length" if kind == "string_too_short" else "above maximum length"
        code = "string_below_min_length" if kind == "string_too_short" else "string_above_max_length"
        return ProtocolError(
            f"Invalid '{param}': string {which}. Expected a string with length {limit}.", code, param, event_id
        )
    if kind in _TYPE_NAMES:
        return invalid_type(param, _TYPE_NAMES[kind], value, event_id)
    return ProtocolError(f"Invalid value for '{param}': {error['msg']}.", "invalid_value", param, event_id)


def _literal_options(expected: str) -> list[str]:
    return [part.strip().strip("'") for part in expected.replace(" or ", ",").split(",") if part.strip()]


def _param_path(data: Any, loc: tuple[Any, ...]) -> str:
    """The dotted path of an error location, skipping the union-branch labels pydantic adds to `loc`."""
    path = ""
    current = data
    for position, part in enumerate(loc):
        if isinstance(part, int) and isinstance(current, list) and 0 <= part < len(current):
            path += f"[{part}]"
            current = current[part]
        elif isinstance(part, str) and isinstance(current, dict) and part in current:
            path = f"{path}.{part}" if path else part
            current = current[part]
        elif position == len(loc) - 1 and isinstance(part, str) and isinstance(current, dict):
            # The last element names a field absent from the input (a missing required field).
            path = f"{path}.{part}" if path else part
            current = None
    return path


def invalid_type(param: str, expected: str, value: Any, event_id: str | None) -> ProtocolError:
    return ProtocolError(
        f"Invalid type for '{param}': expected {expected}, but got {json_type_name(value)} instead.",
        "invalid_type",
        param,
        event_id,
    )


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def clip(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
