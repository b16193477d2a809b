"""The gateway's CoAP resource tree: aiocoap's ``Site``, routing a request without deep-copying it.

aiocoap hands each resource a copy of the request with the resource's path stripped, made by ``Message.copy()``,
which deep-copies every option object (about 34 ``copy.deepcopy`` calls for a telemetry POST). Under the 10,000
device benchmark (``python -m benchmarks.bench_gateway --profile``) that copy was a quarter of the event loop's
time per POST, more than the gateway's own ``/telemetry`` handler. The copy made here is a new message with a new
option table whose lists hold the same (never mutated) option objects: an option set on the copy does not show on
the request, as with aiocoap's copy.

This overrides ``Site._find_child_and_pathstripped_message``, a private method of aiocoap 0.4.17 (the version the
``gateway`` extra pins), for a path that names a resource exactly; anything else goes to aiocoap's own.
"""

from __future__ import annotations

from typing import Any

import aiocoap
import aiocoap.resource as resource
from aiocoap.options import Options


def stripped_copy(request: Any) -> Any:
    """``request`` without its Uri-Path: a new Message and option table sharing the option objects."""
    new = aiocoap.Message(code=request.code, payload=request.payload, transport_tuning=request.transport_tuning)
    new.mtype = request.mtype
    new.mid = request.mid
    new.token = request.token
    new.remote = request.remote
    new.direction = request.direction
    opt = Options()
    opt._options = {number: list(values) for number, values in request.opt._options.items()}
    new.opt = opt
    opt.uri_path = ()
    return new


class Site(resource.Site):  # type: ignore[misc]
    def _find_child_and_pathstripped_message(self, request: Any) -> tuple[Any, Any]:
        child = self._resources.get(request.opt.uri_path)
        if child is None:
            return super()._find_child_and_pathstripped_message(request)  # type: ignore[no-any-return]
        original = getattr(request, "_original_request_uri", None)
        stripped = stripped_copy(request)
        stripped._original_request_uri = original if original is not None else request.get_request_uri()
        return child, stripped
