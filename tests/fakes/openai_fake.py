"""A loopback fake of OpenAI's HTTP API: streaming chat completions (SSE, with usage) and `/v1/audio/speech` (PCM).

It speaks the real wire shapes so that the server's real provider code (the `openai` SDK) runs against it. Tests
steer it through `/_fake/*` endpoints:

* `POST /_fake/script` `{"key": KEY, "chat": [step, …], "speech": [step, …], "transcription": [step, …]}` queues
  the behaviour of the next requests of the session (or the server's API key) KEY: each such request takes the next
  step, other requests and requests without a step get the default (see `tests.fakes.loopback.ScriptBook`).
  A chat step is `{"text": str, "tool_calls": [{"name", "arguments", "id"?}], "status": int, "delay_s": float,
  "chunk_delay_s": float, "stall_after_chunks": int, "drop_after_chunks": int, "finish_reason": str,
  "prompt_tokens": int, "chunk_chars": int}`; a speech step is `{"status": int, "delay_s": float,
  "ms_per_char": float, "stall_s": float, "drop_after_bytes": int}`; a transcription step is
  `{"text": str, "status": int, "delay_s": float}` (the default text is "hello").
* `GET /_fake/requests?key=KEY` returns the requests of KEY (all of them without `key`: path, headers, JSON body,
  and the session they were for; a chat request whose client went away before the reply ended has
  `"cancelled": true`); `POST /_fake/reset` clears scripts and the log.

Run it alone with `python -m tests.fakes.openai_fake --port 9100` (the benchmark does).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
import wave
from typing import Any

from aiohttp import web

from tests.fakes.loopback import BackgroundLoop, ScriptBook, keys_of, session_of, stream_pcm, tone

SAMPLE_RATE = 24_000


def default_reply(messages: list[dict[str, Any]]) -> str:
    """The reply when no script says otherwise: it names what the user said last, so tests can check context."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content if part.get("type") == "text")
            return f"You said: {content}. That is all I have to say."
    return "Hello there. How can I help you today?"


class FakeOpenAI:
    """The fake server; `start_in_thread()` runs it on its own event loop for synchronous test code."""

    def __init__(self) -> None:
        self.scripts = ScriptBook()
        self.requests: list[dict[str, Any]] = []
        self.port: int = 0
        self._runner: web.AppRunner | None = None
        self._background = BackgroundLoop("fake-openai")

    # ---- app ---------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcription)
        app.router.add_post("/_fake/script", self._script)
        app.router.add_get("/_fake/requests", self._requests)
        app.router.add_post("/_fake/reset", self._reset)
        return app

    def _log(self, request: web.Request, body: Any) -> dict[str, Any]:
        record = {"path": request.path, "headers": dict(request.headers), "body": body}
        record["session"] = session_of(request.headers)
        self.requests.append(record)
        return record

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self._log(request, body)
        return body

    def requests_for(self, key: str) -> list[dict[str, Any]]:
        """The requests of session (or credential) `key`, in order."""
        return [record for record in self.requests if key in keys_of(record["headers"])]

    def step(self, kind: str, request: web.Request) -> dict[str, Any]:
        return self.scripts.take(kind, keys_of(request.headers))

    async def _script(self, request: web.Request) -> web.Response:
        body = await request.json()
        for kind in ("chat", "speech", "transcription"):
            self.scripts.add(kind, body.get("key"), body.get(kind, []))
        return web.json_response({"ok": True})

    async def _requests(self, request: web.Request) -> web.Response:
        key = request.query.get("key")
        records = [r for r in self.requests if key is None or key in keys_of(r["headers"])]
        return web.json_response(records)

    async def _reset(self, _request: web.Request) -> web.Response:
        self.scripts.clear()
        self.requests.clear()
        return web.json_response({"ok": True})

    # ---- chat completions ----------------------------------------------------------------------------------

    async def _chat(self, request: web.Request, step: dict[str, Any] | None = None) -> web.StreamResponse:
        body = await request.json()
        record = self._log(request, body)
        record["cancelled"] = False
        try:
            return await self._chat_reply(request, body, step)
        except (ConnectionError, asyncio.CancelledError):
            record["cancelled"] = True  # the client closed the stream (a cancelled response)
            raise

    async def _chat_reply(
        self, request: web.Request, body: dict[str, Any], step: dict[str, Any] | None
    ) -> web.StreamResponse:
        step = self.step("chat", request) if step is None else step
        if step.get("delay_s"):
            await asyncio.sleep(step["delay_s"])
        if step.get("status"):
            status = step["status"]
            error = {"message": step.get("message", f"fake error {status}"), "type": "fake_error", "code": None}
            return web.json_response({"error": error}, status=status)
        model = body.get("model", "fake-model")
        text = step.get("text", default_reply(body.get("messages", [])))
        chunks = self._chat_chunks(model, text, step, body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        delay = step.get("chunk_delay_s", 0.0)
        for index, chunk in enumerate(chunks):
            if step.get("stall_after_chunks") == index:
                await asyncio.sleep(3600)
            if step.get("drop_after_chunks") == index:
                request.transport.close()  # type: ignore[union-attr]
                return response
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if delay:
                await asyncio.sleep(delay)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _chat_chunks(self, model: str, text: str, step: dict[str, Any], body: dict[str, Any]) -> list[dict]:
        created = int(time.time())
        ident = f"chatcmpl-{len(self.requests)}"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }

        chunks = [chunk({"role": "assistant", "content": ""})]
        size = step.get("chunk_chars", 6)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        words = text.split(" ")
        finish = step.get("finish_reason", "stop")
        if max_tokens is not None and len(words) > max_tokens:
            text = " ".join(words[:max_tokens])
            finish = "length"
        for start in range(0, len(text), size):
            chunks.append(chunk({"content": text[start : start + size]}))
        for index, call in enumerate(step.get("tool_calls", [])):
            call_id = call.get("id", f"call_fake{index}")
            first = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            chunks.append(chunk({"tool_calls": [first]}))
            arguments = call["arguments"]
            for start in range(0, len(arguments), 4):
                piece = {"index": index, "function": {"arguments": arguments[start : start + 4]}}
                chunks.append(chunk({"tool_calls": [piece]}))
            finish = step.get("finish_reason", "tool_calls")
        chunks.append(chunk({}, finish))
        prompt_tokens = step.get(
            "prompt_tokens", sum(len(str(m.get("content", ""))) // 4 + 1 for m in body.get("messages", []))
        )
        completion_tokens = max(1, len(text) // 4)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": step.get("cached_tokens", 0)},
        }
        chunks.append(
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
        )
        return chunks

    # ---- speech --------------------------------------------------------------------------------------------

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        step = self.step("speech", request)
        if step.get("delay_s"):
            await asyncio.sleep(step["delay_s"])
        if step.get("status"):
            status = step["status"]
            error = {"message": step.get("message", f"fake speech error {status}"), "type": "fake_error"}
            return web.json_response({"error": error}, status=status)
        if body.get("response_format") != "pcm":
            return web.json_response({"error": {"message": "only pcm is faked"}}, status=400)
        duration = max(0.1, len(body.get("input", "")) * step.get("ms_per_char", 40.0) / 1000)
        audio = tone(duration)
        # pieces of 100 ms
        return await stream_pcm(request, audio, step, 4800, {"Content-Type": "audio/pcm"})

    # ---- transcriptions -----------------------------------------------------------------------------------

    async def _transcription(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        audio = upload.file.read()  # type: ignore[union-attr]
        with wave.open(io.BytesIO(audio)) as wav:
            rate, frames = wav.getframerate(), wav.getnframes()
        fields = {key: value for key, value in form.items() if key != "file"}
        body = {**fields, "audio_ms": frames * 1000 / rate, "sample_rate": rate}
        self._log(request, body)
        step = self.step("transcription", request)
        if step.get("delay_s"):
            await asyncio.sleep(step["delay_s"])
        if step.get("status"):
            error = {"message": step.get("message", "fake transcription error"), "type": "fake_error"}
            return web.json_response({"error": error}, status=step["status"])
        return web.json_response({"text": step.get("text", "hello")})

    # ---- running ------------------------------------------------------------------------------------------

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start_in_thread(self) -> FakeOpenAI:
        self._background.start(self.start)
        return self

    def stop_thread(self) -> None:
        self._background.stop(self.stop)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    fake = FakeOpenAI()

    async def serve() -> None:
        await fake.start(args.port)
        print(f"fake OpenAI listening on {fake.base_url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
