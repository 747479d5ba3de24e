"""Free-mic terminal client for a Realtime API server: talk, hear the reply, talk over it to interrupt.

    python push_to_talk_app.py                      # ws://localhost:8000/v1/realtime
    python push_to_talk_app.py --list-devices       # pick --input-device / --output-device

The client is `clients/voice_chat.py`, which describes how it works and its flags; this launcher keeps the command
users know.
"""

import sys

from clients.voice_chat import main

if __name__ == "__main__":
    sys.exit(main())
