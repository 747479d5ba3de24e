"""Where the parts of the session core put what they produce: server events and commands for the pipeline.

Events are built in the GA shape and rendered for the connection's dialect as they are put here (`render_event`),
so every part of the core writes each event once, whichever dialect the client speaks. The connection takes the
events and the commands after each input (`take_events`, `take_commands`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from protocol import Dialect, JsonDict, ServerEvent, new_id
from session.commands import Command
from wire.beta import render_event


class Outbox:
    def __init__(self, dialect: Dialect, beta_temperature: Callable[[], float]) -> None:
        self.dialect = dialect
        self._beta_temperature = beta_temperature  # beta responses show the session's temperature
        self._events: list[JsonDict] = []
        self._commands: list[Command] = []

    def emit(self, event_type: ServerEvent, **fields: object) -> None:
        self.emit_event({"type": event_type.value, "event_id": new_id("event"), **fields})

    def emit_event(self, event: JsonDict) -> None:
        rendered = render_event(event, self.dialect, beta_temperature=self._beta_temperature())
        if rendered is not None:
            self._events.append(rendered)

    def item_added(self, previous_item_id: str | None, item: JsonDict) -> None:
        self.emit(ServerEvent.CONVERSATION_ITEM_ADDED, previous_item_id=previous_item_id, item=snapshot(item))

    def item_done(self, previous_item_id: str | None, item: JsonDict) -> None:
        self.emit(ServerEvent.CONVERSATION_ITEM_DONE, previous_item_id=previous_item_id, item=snapshot(item))

    def command(self, command: Command) -> None:
        self._commands.append(command)

    def take_events(self) -> list[JsonDict]:
        events, self._events = self._events, []
        return events

    def take_commands(self) -> list[Command]:
        commands, self._commands = self._commands, []
        return commands


def snapshot(item: JsonDict) -> JsonDict:
    """A copy of an item safe to put in an event (items change as a response goes on)."""
    return copy.deepcopy(item)
