"""The checks that the field types alone cannot express, and the canonical (GA) form of client-made items."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from protocol import JsonDict, ProtocolError, new_id
from wire.errors import clip


def dump(model: BaseModel) -> JsonDict:
    return model.model_dump(exclude_unset=True)


def check_response_params(params: JsonDict, event_id: str | None) -> None:
    """Checks the parts of a GA `response` that the field types alone cannot express."""
    conversation = params.get("conversation")
    if conversation is not None and conversation not in ("auto", "none"):
        raise ProtocolError(
            f"Invalid value: '{clip(conversation)}'. Supported values are: 'auto' and 'none'.",
            param="response.conversation",
            event_id=event_id,
        )
    check_output_and_tools(params, "response", event_id)
    canonical_input = []
    for index, item in enumerate(params.get("input") or []):
        if item.get("type") == "item_reference":
            canonical_input.append(item)
        else:
            canonical_input.append(canonical_item(item, f"response.input[{index}]", event_id))
    if "input" in params:
        params["input"] = canonical_input


def check_output_and_tools(params: JsonDict, scope: str, event_id: str | None) -> None:
    """The `output_modalities`, `tools` and `tool_choice` of a session or a response (`scope`), where given."""
    if "output_modalities" in params:
        check_modalities(params["output_modalities"], f"{scope}.output_modalities", event_id)
    for index, tool in enumerate(params.get("tools") or []):
        check_tool(tool, f"{scope}.tools[{index}]", event_id)
    if "tool_choice" in params:
        check_tool_choice(params["tool_choice"], f"{scope}.tool_choice", event_id)


def check_modalities(modalities: list[str], param: str, event_id: str | None) -> None:
    if sorted(set(modalities)) != sorted(modalities) or modalities not in (["text"], ["audio"]):
        raise ProtocolError(
            f"Invalid modalities: {modalities}. Supported combinations are: ['text'] and ['audio'].",
            param=param,
            event_id=event_id,
        )


def check_tool(tool: JsonDict, param: str, event_id: str | None) -> None:
    if tool.get("type") != "mcp":
        return
    for hosted in ("connector_id", "tunnel_id"):
        if tool.get(hosted) is not None:
            raise ProtocolError(
                f"'{hosted}' names a connector hosted by OpenAI, which this server cannot reach: give the MCP "
                "server's own 'server_url' instead.",
                code="unsupported_tool",
                param=f"{param}.{hosted}",
                event_id=event_id,
            )
    url = tool.get("server_url")
    if url is None:
        raise ProtocolError(
            f"Missing required parameter: '{param}.server_url'.",
            code="missing_required_parameter",
            param=f"{param}.server_url",
            event_id=event_id,
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProtocolError(
            f"Invalid 'server_url': '{clip(url)}'. Expected an http:// or https:// URL.",
            param=f"{param}.server_url",
            event_id=event_id,
        )
    if not _SERVER_LABEL.fullmatch(tool["server_label"]):
        raise ProtocolError(
            f"Invalid 'server_label': '{clip(tool['server_label'])}'. Use letters, digits, '_' and '-', starting "
            "with a letter.",
            param=f"{param}.server_label",
            event_id=event_id,
        )


def check_tool_choice(choice: Any, param: str, event_id: str | None) -> None:
    """Whether a named tool exists is checked where the tools are known (`session.responses`)."""


_SERVER_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def check_mcp_hosts(tools: list[JsonDict], allowed_hosts: tuple[str, ...], scope: str, event_id: str | None) -> None:
    """Refuses an MCP server outside the allow-list (`MCP_ALLOWED_HOSTS`; empty: any host)."""
    if not allowed_hosts:
        return
    for index, tool in enumerate(tools):
        if tool.get("type") != "mcp":
            continue
        parts = urlsplit(tool["server_url"])
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if host not in allowed_hosts and f"{host}:{port}" not in allowed_hosts:
            raise ProtocolError(
                f"The MCP server host '{host}' is not allowed on this server (MCP_ALLOWED_HOSTS).",
                code="mcp_host_not_allowed",
                param=f"{scope}.tools[{index}].server_url",
                event_id=event_id,
            )


_ROLE_CONTENT_TYPES = {
    "system": ("input_text",),
    "user": ("input_text", "input_audio", "input_image"),
    "assistant": ("output_text", "output_audio"),
}


def canonical_item(item: JsonDict, param: str, event_id: str | None) -> JsonDict:
    """Checks a client-created item and returns it in canonical (GA) form, without server-assigned fields."""
    item_type = item.get("type")
    if item_type == "mcp_approval_response":
        result = {"type": item_type, "approval_request_id": item["approval_request_id"], "approve": item["approve"]}
        if item.get("id") is not None:
            result["id"] = item["id"]
        if item.get("reason") is not None:
            result["reason"] = item["reason"]
        return result
    if item_type is not None and item_type.startswith("mcp_"):
        raise ProtocolError(
            f"Items of type '{item_type}' are not supported by this server.",
            code="unsupported_item",
            param=f"{param}.type",
            event_id=event_id,
        )
    result: JsonDict = {"type": item_type}
    if item.get("id") is not None:
        result["id"] = item["id"]
    if item_type == "message":
        role = item["role"]
        allowed = _ROLE_CONTENT_TYPES[role]
        parts = []
        for index, part in enumerate(item.get("content") or []):
            part_param = f"{param}.content[{index}]"
            part_type = part["type"]
            if part_type not in allowed:
                supported = " and ".join(f"'{name}'" for name in allowed)
                raise ProtocolError(
                    f"Invalid value: '{part_type}'. Supported values for {role} messages are: {supported}.",
                    param=f"{part_param}.type",
                    event_id=event_id,
                )
            parts.append(_canonical_part(part, part_param, event_id))
        result.update(role=role, content=parts)
        result["status"] = item.get("status") or "completed"
    elif item_type == "function_call":
        result.update(
            call_id=item.get("call_id") or new_id("call"),
            name=item["name"],
            arguments=item["arguments"],
            status=item.get("status") or "completed",
        )
    elif item_type == "function_call_output":
        result.update(call_id=item["call_id"], output=item["output"])
    return result


def _canonical_part(part: JsonDict, param: str, event_id: str | None) -> JsonDict:
    part_type = part["type"]
    required = {
        "input_text": "text",
        "output_text": "text",
        "input_image": "image_url",
        "input_audio": "audio",
    }.get(part_type)
    if part_type == "output_audio" and part.get("audio"):
        raise ProtocolError(
            "Assistant audio cannot be created by the client; send the transcript as 'output_text' instead.",
            param=f"{param}.audio",
            event_id=event_id,
        )
    if part_type == "input_audio" and part.get("audio") is None and part.get("transcript") is not None:
        required = None  # a transcript alone is a spoken turn the client already transcribed
    if required is not None and part.get(required) is None:
        raise ProtocolError(
            f"Missing required parameter: '{param}.{required}'.",
            code="missing_required_parameter",
            param=f"{param}.{required}",
            event_id=event_id,
        )
    if part_type in ("input_text", "output_text"):
        return {"type": part_type, "text": part["text"]}
    if part_type == "input_image":
        url = part["image_url"]
        if not url.startswith(("data:image/", "http://", "https://")):
            raise ProtocolError(
                "Invalid 'image_url': expected a data URL (data:image/...;base64,...) or an http(s) URL.",
                param=f"{param}.image_url",
                event_id=event_id,
            )
        return {"type": "input_image", "image_url": url, "detail": part.get("detail") or "auto"}
    if part_type == "input_audio":
        return {"type": "input_audio", "audio": part.get("audio"), "transcript": part.get("transcript")}
    # output_audio with a transcript only: kept as spoken text of the assistant
    return {"type": "output_audio", "transcript": part.get("transcript") or ""}
