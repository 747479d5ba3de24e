"""The two clients that come with the server, and what they share; neither is part of the server.

`scripted` is the end-to-end check and the typed interactive session (run as `python test_client.py`); `voice_chat`
is the free-mic Textual app (run as `python push_to_talk_app.py`). Both reach the server through `connection` (its
address, opening and closing the socket) and `command_line` (the flags that choose it), and play replies through
`playback` (a sound card via PortAudio). Nothing is imported here, so that the scripted client never loads Textual,
and neither client loads sounddevice before it opens a sound card.
"""
