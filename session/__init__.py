"""The session core: one Realtime session's state, pure (no I/O, no settings). See `realtime_session.py`."""
