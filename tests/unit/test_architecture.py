"""The shape the README's architecture section describes, checked on the source: import cycles, and which modules
the pure core may import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The session core and the wire protocol: pure, so tested without sockets, settings or a pipeline.
CORE = ("protocol", "realtime_session", "session", "wire", "access", "client_secrets")
# What the core may not import: settings, I/O, the pipeline, the providers.
NOT_IN_CORE = (
    "config",
    "fastapi",
    "starlette",
    "uvicorn",
    "pipecat",
    "asyncio",
    "httpx",
    "httpx2",
    "openai",
    "transport",
    "connection",
    "pipeline_manager",
    "pipeline_stages",
    "service_providers",
    "providers",
    "main",
    "mcp",
    "mcp_types",
    "mcp_client",
)


def project_modules() -> dict[str, Path]:
    """Every module of the server and the clients, by dotted name (tests and benchmarks aside)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in (".venv", "tests", "bench") or any(part.startswith(".") for part in relative.parts):
            continue
        name = ".".join(relative.with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def imports(path: Path) -> set[str]:
    """The modules a file imports, anywhere in it (a lazy import inside a function counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {
        name: {other for other in imports(path) if other in modules and other != name} for name, path in modules.items()
    }


def test_no_import_cycles() -> None:
    graph = project_graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "visiting"
        for other in sorted(graph[name]):
            if state.get(other) == "visiting":
                cycles.append([*trail[trail.index(other) :], other] if other in trail else [name, other])
            elif other not in state:
                visit(other, [*trail, other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_the_core_reads_no_settings_and_does_no_io() -> None:
    modules = project_modules()
    offending = {}
    for name, path in modules.items():
        if name.split(".")[0] not in CORE:
            continue
        bad = {found for found in imports(path) if found.split(".")[0] in NOT_IN_CORE}
        if bad:
            offending[name] = sorted(bad)
    assert not offending, offending
