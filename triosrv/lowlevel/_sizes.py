"""The sizes every server design shares, defined once.

Each backend (and the ``trio`` backend's protocol driver, ``_handlers.py``) sends and
accepts in the same units, so that the designs compare like with like.
"""

from __future__ import annotations

# The most bytes one send hands the kernel, and the most a protocol is asked for at a
# time (``data_to_send(SEND_SIZE)``). Larger sends only sit in our memory while the
# peer is slow; 64 KiB keeps a connection's footprint flat.
SEND_SIZE = 65536

# How many connections one accept loop takes from the kernel before it lets other
# tasks (or, in the single-loop backends, the other fds) run. Taking the whole queue in
# one go is what makes a burst of 1000 clients cheap: one accept per scheduler pass
# made trio.serve_tcp quadratic in the burst.
ACCEPT_BATCH = 256
