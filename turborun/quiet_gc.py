"""Cyclic garbage collection kept out of the way of requests in flight.

CPython counts a young collection due after ``threshold0`` more container objects were
allocated than freed. While a process holds requests in flight, nearly everything it
allocated is alive (each request ~185 tracked objects: SDK, httpx, asyncio), so that count
climbs with the requests in flight, and each young collection walks every one of those
live objects only to find no garbage: 20-40 ms at 250 requests per worker process, both
worker processes at the same moment (they fill at the same rate). The requests due
meanwhile then leave together, and a provider's one-second window sees more than was
paced; the simulator's own collections did the same to arrivals at the server.

Measured through the SDK against the simulator: 1,000 successes, 429s or 5xx answers leave
no cyclic garbage at all (reference counting frees them); 1,000 timeouts leave ~6,900
objects (cancelled tasks and their tracebacks). So a young collection is due only after
``YOUNG`` net allocations: never while ~5,000 requests are in flight in one process, and
after ~140,000 timeouts (then one pause of a few hundred ms, and the memory comes back).
Objects alive at the call (modules, clients) are frozen out of every collection.
"""

from __future__ import annotations

import gc

YOUNG = 1_000_000


def quiet_gc() -> None:
    gc.freeze()
    gc.set_threshold(YOUNG, 20, 100)
