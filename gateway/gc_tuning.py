"""The garbage collector's thresholds for the gateway process (``iotdtls-gateway run`` sets them at start).

CPython collects its youngest generation after every 700 net allocations of tracked objects (``gc.get_threshold()``
is (700, 10, 10)). At a thousand POSTs per second that is every few milliseconds, while the objects of a request
(aiocoap's messages, pipes, futures and tasks) live for the ~50 ms the request takes: they survived two collections,
were promoted to the oldest generation and made it collect about once a second. With 10,000 sessions the process
tracks some 300,000 objects, so each of those full collections stopped the event loop for 100-200 ms (measured with
``python -m benchmarks.bench_gateway --profile``: 6 full collections in 5 s of load, the longest 202 ms).

Collecting the youngest generation every 50,000 allocations lets a request's objects die before a collection sees
them (most are freed by reference counting anyway), so little is promoted and full collections become rare; a young
collection of up to 50,000 objects takes a few milliseconds. In the 10,000-device benchmark this raised the
acknowledged POSTs/s by about a third and cut the p99 round trip under full load from 260 ms to 86 ms. What waits
for the collector is only cyclic garbage, a few megabytes at most.
"""

from __future__ import annotations

import gc

#: Allocations between collections of the youngest generation, and collections of a generation between
#: collections of the next.
THRESHOLDS = (50_000, 20, 20)


def tune_collector() -> None:
    gc.set_threshold(*THRESHOLDS)
