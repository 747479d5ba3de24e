"""The beta dialect as a translation of the GA one: beta client events into GA-shaped commands (in), and GA-shaped
server events, sessions, items and responses into their beta shapes (out)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from protocol import (
    BETA_EVENT_NAMES,
    GA_ONLY_EVENTS,
    Dialect,
    JsonDict,
    ProtocolError,
    ResponseCreate,
    SessionUpdate,
)
from wire.canonical import check_response_params, dump
from wire.errors import clip
from wire.models import BetaResponseParams, BetaSession, BetaTranscriptionSession

_BETA_FORMATS: dict[str, JsonDict] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_GA_FORMAT_TO_BETA = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


def _beta_modalities(modalities: list[str], param: str, event_id: str | None) -> list[str]:
    if not modalities:
        raise ProtocolError(
            "Invalid modalities: []. Supported combinations are: ['text'] and ['text', 'audio'].",
            param=param,
            event_id=event_id,
        )
    return ["audio"] if "audio" in modalities else ["text"]


def _beta_turn_detection(detection: JsonDict | None) -> JsonDict | None:
    if detection is None:
        return None
    kind = detection.get("type", "server_vad")
    keys = (
        ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms")
        if kind == "server_vad"
        else ("eagerness",)
    )
    result = {"type": kind}
    for key in (*keys, "create_response", "interrupt_response"):
        if key in detection:
            result[key] = detection[key]
    return result


def _beta_tool_choice(choice: str) -> str | JsonDict:
    return choice if choice in ("auto", "none", "required") else {"type": "function", "name": choice}


def _renamed(source: JsonDict, names: Mapping[str, str], convert: Mapping[str, Callable[[Any], Any]]) -> JsonDict:
    """The entries of `source` listed in `names`, under their GA names, converted where `convert` says."""
    return {
        ga_name: convert[beta_name](source[beta_name]) if beta_name in convert else source[beta_name]
        for beta_name, ga_name in names.items()
        if beta_name in source
    }


_AUDIO_INPUT_NAMES = {
    "input_audio_format": "format",
    "input_audio_transcription": "transcription",
    "input_audio_noise_reduction": "noise_reduction",
    "turn_detection": "turn_detection",
}
_AUDIO_OUTPUT_NAMES = {"output_audio_format": "format", "voice": "voice", "speed": "speed"}
_CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "input_audio_format": _BETA_FORMATS.__getitem__,
    "output_audio_format": _BETA_FORMATS.__getitem__,
    "turn_detection": _beta_turn_detection,
}


def _beta_audio_input_patch(session: JsonDict) -> JsonDict:
    return _renamed(session, _AUDIO_INPUT_NAMES, _CONVERSIONS)


def _beta_common(given: JsonDict, scope: str, event_id: str | None, names: Mapping[str, str]) -> JsonDict:
    """What a beta session and a beta response share: renamed fields, modalities and the tool choice."""
    for index, tool in enumerate(given.get("tools") or []):
        if tool.get("type") == "mcp":
            raise ProtocolError(
                "MCP tools are not available in the beta dialect (it has no MCP items or events): connect with the "
                "GA dialect to use them.",
                code="unsupported_tool",
                param=f"{scope}.tools[{index}].type",
                event_id=event_id,
            )
    patch = _renamed(given, names, _CONVERSIONS)
    if "modalities" in given:
        patch["output_modalities"] = _beta_modalities(given["modalities"], f"{scope}.modalities", event_id)
    if given.get("tool_choice") is not None:
        patch["tool_choice"] = _beta_tool_choice(given["tool_choice"])
    return patch


def beta_session_update(model: BetaSession, event_id: str | None) -> SessionUpdate:
    session = dump(model)
    names = {key: key for key in ("model", "instructions", "tracing", "tools")}
    patch: JsonDict = {
        "type": "realtime",
        **_beta_common(session, "session", event_id, {**names, "max_response_output_tokens": "max_output_tokens"}),
    }
    audio_input = _beta_audio_input_patch(session)
    audio_output = _renamed(session, _AUDIO_OUTPUT_NAMES, _CONVERSIONS)
    audio = {key: value for key, value in (("input", audio_input), ("output", audio_output)) if value}
    if audio:
        patch["audio"] = audio
    return SessionUpdate(event_id, "realtime", patch, temperature=session.get("temperature"))


def beta_transcription_update(model: BetaTranscriptionSession, event_id: str | None) -> SessionUpdate:
    session = dump(model)
    patch: JsonDict = {"type": "transcription"}
    if "include" in session:
        unknown = [name for name in session["include"] or [] if name != "item.input_audio_transcription.logprobs"]
        if unknown:
            raise ProtocolError(
                f"Invalid value: '{clip(unknown[0])}'. Supported values are: "
                "'item.input_audio_transcription.logprobs'.",
                param="session.include",
                event_id=event_id,
            )
        patch["include"] = session["include"]
    audio_input = _beta_audio_input_patch(session)
    if audio_input:
        patch["audio"] = {"input": audio_input}
    return SessionUpdate(event_id, "transcription", patch)


def beta_item_to_ga(item: JsonDict) -> JsonDict:
    """A beta item in GA shape: assistant `text`/`audio` parts become `output_text`/`output_audio`."""
    item = dict(item)
    if item.get("type") is None:
        item["type"] = "message" if "content" in item or "role" in item else None
    if item.get("type") == "message":
        role = item.get("role")
        parts = []
        for part in item.get("content") or []:
            part = {key: value for key, value in part.items() if key != "id"}
            if role == "assistant":
                part["type"] = {"text": "output_text", "audio": "output_audio"}.get(part["type"], part["type"])
            elif part["type"] == "text":
                part["type"] = "input_text"
            parts.append(part)
        item["content"] = parts
    return item


def require_beta_item_fields(item: JsonDict, param: str, event_id: str | None) -> None:
    required = {
        None: ("type",),
        "message": ("role", "content"),
        "function_call": ("name", "arguments"),
        "function_call_output": ("call_id", "output"),
        "item_reference": ("id",),
    }[item.get("type")]
    for key in required:
        if item.get(key) is None:
            raise ProtocolError(
                f"Missing required parameter: '{param}.{key}'.",
                code="missing_required_parameter",
                param=f"{param}.{key}",
                event_id=event_id,
            )


def beta_response_create(model: BetaResponseParams | None, event_id: str | None) -> ResponseCreate:
    if model is None:
        return ResponseCreate(event_id, {})
    response = dump(model)
    names = {key: key for key in ("conversation", "instructions", "metadata", "tools")}
    params = _beta_common(response, "response", event_id, {**names, "max_response_output_tokens": "max_output_tokens"})
    output = _renamed(response, {"voice": "voice", "output_audio_format": "format"}, _CONVERSIONS)
    if output:
        params["audio"] = {"output": output}
    if "input" in response:
        items = []
        for index, item in enumerate(response["input"] or []):
            ga_item = beta_item_to_ga(item)
            require_beta_item_fields(ga_item, f"response.input[{index}]", event_id)
            items.append(ga_item)
        params["input"] = items
    check_response_params(params, event_id)
    return ResponseCreate(event_id, params, temperature=response.get("temperature"))


def beta_format(ga_format: Mapping[str, Any]) -> str:
    return _GA_FORMAT_TO_BETA[ga_format["type"]]


def to_beta_item(item: JsonDict) -> JsonDict:
    """A canonical item in beta shape (`object` always present, assistant parts `text`/`audio`).

    The beta dialect has no image content type: image parts are kept (the LLM sees them) but not echoed."""
    result = {"object": "realtime.item", **item}
    if item.get("type") == "message":
        parts = []
        for part in item.get("content", []):
            part = dict(part)
            if part["type"] == "output_text":
                part["type"] = "text"
            elif part["type"] == "output_audio":
                part["type"] = "audio"
            elif part["type"] == "input_image":
                continue
            parts.append(part)
        result["content"] = parts
    return result


def to_beta_session(session: JsonDict, temperature: float) -> JsonDict:
    """The beta `Session` object for a canonical realtime session."""
    audio_in = session["audio"]["input"]
    audio_out = session["audio"]["output"]
    voice = audio_out["voice"]
    max_tokens = session["max_output_tokens"]
    tool_choice = session["tool_choice"]
    return {
        "id": session["id"],
        "object": "realtime.session",
        "model": session["model"],
        "expires_at": session["expires_at"],
        "modalities": ["text", "audio"] if session["output_modalities"] == ["audio"] else ["text"],
        "instructions": session["instructions"],
        "voice": voice["id"] if isinstance(voice, dict) else voice,
        "speed": audio_out["speed"],
        "input_audio_format": beta_format(audio_in["format"]),
        "output_audio_format": beta_format(audio_out["format"]),
        "input_audio_transcription": _beta_transcription(audio_in["transcription"]),
        "input_audio_noise_reduction": audio_in["noise_reduction"],
        "turn_detection": _to_beta_turn_detection(audio_in["turn_detection"]),
        "tools": session["tools"],
        "tool_choice": tool_choice["name"] if isinstance(tool_choice, dict) else tool_choice,
        "temperature": temperature,
        "max_response_output_tokens": max_tokens,
        "tracing": session["tracing"],
    }


def to_beta_transcription_session(session: JsonDict) -> JsonDict:
    audio_in = session["audio"]["input"]
    return {
        "id": session["id"],
        "object": "realtime.transcription_session",
        "expires_at": session["expires_at"],
        "modalities": ["text"],
        "input_audio_format": beta_format(audio_in["format"]),
        "input_audio_transcription": _beta_transcription(audio_in["transcription"]),
        "input_audio_noise_reduction": audio_in["noise_reduction"],
        "turn_detection": _to_beta_turn_detection(audio_in["turn_detection"]),
        "include": session.get("include"),
        # The SDK's beta model requires it; a socket session has no secret to hand out, so its value is empty.
        "client_secret": {"value": "", "expires_at": session["expires_at"]},
    }


def _beta_transcription(transcription: JsonDict | None) -> JsonDict | None:
    if transcription is None:
        return None
    return {key: transcription[key] for key in ("model", "language", "prompt") if key in transcription}


def _to_beta_turn_detection(detection: JsonDict | None) -> JsonDict | None:
    if detection is None:
        return None
    result = dict(detection)
    result.pop("idle_timeout_ms", None)
    return result


def to_beta_response(response: JsonDict, temperature: float) -> JsonDict:
    audio_output = response.get("audio", {}).get("output", {})
    voice = audio_output.get("voice")
    return {
        "id": response["id"],
        "object": "realtime.response",
        "status": response["status"],
        "status_details": response["status_details"],
        "output": [to_beta_item(item) for item in response["output"]],
        "conversation_id": response["conversation_id"],
        "modalities": ["text", "audio"] if response["output_modalities"] == ["audio"] else ["text"],
        "voice": voice["id"] if isinstance(voice, dict) else voice,
        "output_audio_format": beta_format(audio_output["format"]) if "format" in audio_output else "pcm16",
        "temperature": temperature,
        "max_output_tokens": response["max_output_tokens"],
        "metadata": response["metadata"],
        "usage": response["usage"],
    }


def render_event(event: JsonDict, dialect: Dialect, *, beta_temperature: float = 0.8) -> JsonDict | None:
    """The event as the connection's dialect names and shapes it; `None` when that dialect has no such event."""
    if dialect == "ga":
        return event
    event_type = event["type"]
    if event_type in GA_ONLY_EVENTS:
        return None
    rendered = dict(event)
    rendered["type"] = BETA_EVENT_NAMES.get(event_type, event_type)
    if "item" in rendered:
        rendered["item"] = to_beta_item(rendered["item"])
    if "response" in rendered:
        rendered["response"] = to_beta_response(rendered["response"], beta_temperature)
    return rendered
