"""iotdtls-coap-server (iotdtls/cli/coap_server.py) with /telemetry replaced by a recorder, for the device tests:

    python tests/mp_query_server.py [--hang N] IOTDTLS-COAP-SERVER-ARGS...

Every POST to /telemetry prints one JSON line on stdout as it arrives: {"from": identity, "query": [Uri-Query
options], "mid": n, "token": hex, "reading": the CBOR map, "hang": bool}. The first N of them (``--hang N``) are
never answered: aiocoap acknowledges a request whose response is not ready after EMPTY_ACK_DELAY (0.1 s) with an
empty ACK, and nothing follows, as from a gateway that crashed after its empty ACK. The others get 2.04.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiocoap
import aiocoap.resource as resource
import cbor2

from iotdtls.cli import coap_server


class RecordingTelemetry(resource.Resource):  # type: ignore[misc]
    def __init__(self, hang: int) -> None:
        super().__init__()
        self.hang = hang

    async def render_post(self, request: Any) -> Any:
        hang = self.hang > 0
        self.hang -= hang
        try:
            reading = cbor2.loads(request.payload)
        except (cbor2.CBORDecodeError, ValueError):
            reading = None
        line = {"from": coap_server._identity_text(request.remote), "query": list(request.opt.uri_query),
                "mid": request.mid, "token": request.token.hex(), "reading": reading, "hang": hang}
        print(json.dumps(line, sort_keys=True), flush=True)
        if hang:
            await asyncio.sleep(3600)
        return aiocoap.Message(code=aiocoap.CHANGED)


def main(argv: list[str]) -> None:
    hang = 0
    if argv[:1] == ["--hang"]:
        hang = int(argv[1])
        argv = argv[2:]
    build_site = coap_server.build_site

    def site(*args: Any) -> Any:
        s = build_site(*args)
        s.add_resource(["telemetry"], RecordingTelemetry(hang))
        return s

    coap_server.build_site = site
    coap_server.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
