"""Scripted client for a Realtime API server: an automatic end-to-end check, or an interactive session (`-i`).

    python test_client.py                           # automatic check of ws://localhost:8000/v1/realtime
    python test_client.py -i                        # type a line, hear (or save) the reply; /wav FILE, /quit

The client is `clients/scripted.py`, which describes its checks, flags and exit codes; this launcher keeps the
command users know.
"""

import sys

from clients.scripted import main

if __name__ == "__main__":
    sys.exit(main())
