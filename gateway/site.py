"""The gateway's CoAP resource tree: aiocoap's ``Site``, routing a request without deep-copying it.

aiocoap hands each resource a copy of the request with the resource's path stripped, made by ``Message.copy()``,
which deep-copies every option object (about 34 ``copy.deepcopy`` calls for a telemetry POST). Under the 10,000
device benchmark (``python -m benchmarks.bench_gateway --profile``) that copy was a quarter of the event loop's
time per POST, more than the gateway's own ``/telemetry`` handler. The copy made here is a new message with a new
option table whose lists hold the same (never mutated) option objects: an option set on the copy does not show on
the request, as with aiocoap's copy. The request's original URI is built only if something asks for it.

This overrides ``Site._find_child_and_pathstripped_message``, a private method of aiocoap 0.4.17 (the version the
``gateway`` extra pins), for a path that names a resource exactly; anything else goes to aiocoap's own.
"""

from __future__ import annotations

from typing import Any

import aiocoap
import aiocoap.resource as resource
from aiocoap.options import Options


class RoutedRequest(aiocoap.Message):  # type: ignore[misc]
    """A request as its resource sees it. aiocoap keeps the URI the request had before its path was stripped in
    ``_original_request_uri`` (``get_request_uri()`` answers with it); building that string for every request cost
    as much again as the copy, so it is built from the original request when first asked for."""

    _routed_from: Any = None
    _uri: str | None = None

    @property
    def _original_request_uri(self) -> str:
        if self._uri is None:
            if self._routed_from is None:
                raise AttributeError("_original_request_uri")  # a copy of a copy: aiocoap sets it
            self._uri = self._routed_from.get_request_uri()
        return self._uri

    @_original_request_uri.setter
    def _original_request_uri(self, value: str) -> None:
        self._uri = value


def stripped_copy(request: Any) -> RoutedRequest:
    """``request`` without its Uri-Path: a new Message and option table sharing the option objects."""
    new = RoutedRequest(code=request.code, payload=request.payload, transport_tuning=request.transport_tuning)
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
        stripped = stripped_copy(request)
        original = getattr(request, "_original_request_uri", None)
        if original is not None:
            stripped._original_request_uri = original
        else:
            stripped._routed_from = request
        return child, stripped
