"""Client messages → the dialect-neutral commands of `protocol.py`, or a `ProtocolError` shaped like the real API's."""

from __future__ import annotations

import json
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ValidationError

import protocol
from protocol import ClientCommand, ClientEvent, Dialect, JsonDict, ProtocolError, SecretRequest
from wire.beta import (
    beta_item_to_ga,
    beta_response_create,
    beta_session_update,
    beta_transcription_update,
    require_beta_item_fields,
)
from wire.canonical import canonical_item, check_response_params, dump
from wire.errors import clip, invalid_type, json_type_name, validation_error
from wire.models import (
    CLIENT_EVENT_MODELS,
    AudioClearEvent,
    AudioCommitEvent,
    BetaItemCreate,
    BetaResponseCreate,
    BetaSession,
    BetaSessionUpdate,
    BetaTranscriptionSession,
    BetaTranscriptionSessionUpdate,
    EventModel,
    GaClientSecretRequest,
    GaItemCreate,
    GaResponseCreate,
    GaSessionUpdate,
    ItemDeleteEvent,
    ItemRetrieveEvent,
    ItemTruncateEvent,
    OutputAudioClearEvent,
    ResponseCancelEvent,
)


def parse_client_event(raw: str | bytes, dialect: Dialect) -> ClientCommand:
    """Parse one WebSocket message into a command, or raise `ProtocolError` shaped like the real API's."""
    if isinstance(raw, bytes):
        raise ProtocolError(
            "Binary frames are not supported: send each event as a JSON text frame.", code="invalid_event"
        )
    try:
        data = _loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"The event could not be parsed as JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ProtocolError(
            f"Expected the event to be a JSON object, but got {json_type_name(data)} instead.", code="invalid_event"
        )
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    event_type = data.get("type")
    if event_type is None:
        raise ProtocolError("The 'type' field is missing.", code="invalid_event", param="type", event_id=event_id)
    if not isinstance(event_type, str):
        raise ProtocolError(
            f"Invalid type for 'type': expected a string, but got {json_type_name(event_type)} instead.",
            code="invalid_type",
            param="type",
            event_id=event_id,
        )
    models = CLIENT_EVENT_MODELS[dialect]
    model = models.get(event_type)
    if model is None:
        supported = ", ".join(f"'{name}'" for name in models)
        raise ProtocolError(
            f"Invalid value: '{clip(event_type)}'. Supported values are: {supported}.",
            code="invalid_value",
            param="type",
            event_id=event_id,
        )
    if event_type == ClientEvent.INPUT_AUDIO_BUFFER_APPEND:
        return _parse_append_fast(data, event_id)
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, data, event_id) from None
    return _to_command(event, dialect)


def _loads(raw: str) -> Any:
    """orjson reads the JSON (several times faster: this runs on every append); what it refuses, the standard
    library reads as before (NaN, integers past 64 bits, lone surrogates) or rejects with its own message."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _parse_append_fast(data: JsonDict, event_id: str | None) -> protocol.AudioAppend:
    """`input_audio_buffer.append` is the hot path (50 per second per session): checked by hand, same errors."""
    for key in data:
        if key not in ("type", "event_id", "audio"):
            raise ProtocolError(f"Unknown parameter: '{clip(key)}'.", "unknown_parameter", key, event_id)
    if "event_id" in data and not isinstance(data["event_id"], str):
        raise invalid_type("event_id", "a string", data["event_id"], event_id)
    audio = data.get("audio")
    if audio is None:
        raise ProtocolError("Missing required parameter: 'audio'.", "missing_required_parameter", "audio", event_id)
    if not isinstance(audio, str):
        raise invalid_type("audio", "a string", audio, event_id)
    return protocol.AudioAppend(event_id, audio)


def _to_command(event: EventModel, dialect: Dialect) -> ClientCommand:
    eid = event.event_id
    match event:
        case GaSessionUpdate():
            session = event.session
            return protocol.SessionUpdate(eid, session.type, dump(session))
        case BetaSessionUpdate():
            return beta_session_update(event.session, eid)
        case BetaTranscriptionSessionUpdate():
            return beta_transcription_update(event.session, eid)
        case AudioCommitEvent():
            return protocol.AudioCommit(eid)
        case AudioClearEvent():
            return protocol.AudioClear(eid)
        case OutputAudioClearEvent():
            return protocol.OutputAudioClear(eid)
        case GaItemCreate():
            given = "previous_item_id" in event.model_fields_set
            item = canonical_item(dump(event.item), "item", eid)
            return protocol.ItemCreate(eid, item, event.previous_item_id, given)
        case BetaItemCreate():
            given = "previous_item_id" in event.model_fields_set
            ga_item = beta_item_to_ga(dump(event.item))
            require_beta_item_fields(ga_item, "item", eid)
            if ga_item["type"] == "item_reference":
                raise ProtocolError(
                    "Item references can only be used in response.input.", param="item.type", event_id=eid
                )
            item = canonical_item(ga_item, "item", eid)
            return protocol.ItemCreate(eid, item, event.previous_item_id, given)
        case ItemRetrieveEvent():
            return protocol.ItemRetrieve(eid, event.item_id)
        case ItemDeleteEvent():
            return protocol.ItemDelete(eid, event.item_id)
        case ItemTruncateEvent():
            return protocol.ItemTruncate(eid, event.item_id, event.content_index, event.audio_end_ms)
        case GaResponseCreate():
            params = dump(event.response) if event.response is not None else {}
            check_response_params(params, eid)
            return protocol.ResponseCreate(eid, params)
        case BetaResponseCreate():
            return beta_response_create(event.response, eid)
        case ResponseCancelEvent():
            return protocol.ResponseCancel(eid, event.response_id)
    raise AssertionError(f"unhandled event model {type(event).__name__}")  # pragma: no cover


def parse_secret_request(
    body: Any, endpoint: Literal["client_secrets", "sessions", "transcription_sessions"]
) -> SecretRequest:
    """Parses the body of `POST /v1/realtime/client_secrets` (GA), `/sessions` or `/transcription_sessions` (beta)."""
    if not isinstance(body, dict):
        raise ProtocolError(
            f"Expected the request body to be a JSON object, but got {json_type_name(body)} instead.",
            code="invalid_request_body",
        )
    model: type[BaseModel] = {
        "client_secrets": GaClientSecretRequest,
        "sessions": BetaSession,
        "transcription_sessions": BetaTranscriptionSession,
    }[endpoint]
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, body, None) from None
    if isinstance(request, GaClientSecretRequest):
        expiry = request.expires_after
        session = request.session
        if session is None:
            return SecretRequest("realtime", {"type": "realtime"}, None, expiry.seconds if expiry else None)
        return SecretRequest(session.type, dump(session), None, expiry.seconds if expiry else None)
    secret = request.client_secret  # type: ignore[union-attr]
    expiry = (secret.expires_after or secret.expires_at) if secret is not None else None
    ttl_s = expiry.seconds if expiry is not None else None
    if isinstance(request, BetaSession):
        update = beta_session_update(request, None)
    else:
        update = beta_transcription_update(request, None)  # type: ignore[arg-type]
    return SecretRequest(update.kind, update.patch, update.temperature, ttl_s)
