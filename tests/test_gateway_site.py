"""The gateway's Site routes as aiocoap's does, with a copy of the request that shares its option objects."""

from __future__ import annotations

import asyncio
from typing import Any

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code
from iotdtls_gateway.site import Site, stripped_copy


class Echo(resource.Resource):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    async def render_post(self, request: Any) -> aiocoap.Message:
        self.seen.append(request)
        return aiocoap.Message(code=Code.CHANGED, payload=b"/".join(p.encode() for p in request.opt.uri_path))


class Remote:
    scheme = "coaps"
    is_multicast = False
    hostinfo = "192.0.2.7:40000"
    hostinfo_local = "127.0.0.1"


def request(path: str) -> Any:
    msg = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1{path}?k=a.1&x=2", payload=b"\xa1aa\x01")
    msg.opt.content_format = 60
    msg.mid, msg.token = 4711, b"tok1"
    msg.remote = Remote()
    msg.direction = aiocoap.message.Direction.INCOMING
    return msg


def test_stripped_copy_keeps_everything_but_the_path() -> None:
    original = request("/telemetry")
    copy = stripped_copy(original)
    assert copy.opt.uri_path == ()
    assert original.opt.uri_path == ("telemetry",)
    assert copy.opt.uri_query == original.opt.uri_query == ("k=a.1", "x=2")
    assert copy.opt.content_format == 60
    assert (copy.code, copy.payload, copy.mid, copy.token, copy.mtype, copy.remote, copy.direction) == \
        (original.code, original.payload, original.mid, original.token, original.mtype, original.remote,
         original.direction)
    copy.opt.uri_query = ("k=b.2",)  # a change to the copy does not reach the request
    copy.opt.observe = 0
    assert original.opt.uri_query == ("k=a.1", "x=2") and original.opt.observe is None
    assert original.opt.encode() == request("/telemetry").opt.encode()


def test_routes_exact_paths_and_nested_sites() -> None:
    site, nested = Site(), resource.Site()
    telemetry, deep = Echo(), Echo()
    site.add_resource(["telemetry"], telemetry)
    nested.add_resource(["leaf"], deep)
    site.add_resource(["sub"], nested)
    child, stripped = site._find_child_and_pathstripped_message(request("/telemetry"))
    assert child is telemetry and stripped.opt.uri_path == ()
    assert stripped.get_request_uri() == "coaps://127.0.0.1/telemetry?k=a.1&x=2"  # the original request's
    child, stripped = site._find_child_and_pathstripped_message(request("/sub/leaf"))
    assert child is nested and stripped.opt.uri_path == ("leaf",)  # aiocoap's own routing below the exact paths
    child, inner = nested._find_child_and_pathstripped_message(stripped)
    assert child is deep and inner.get_request_uri() == "coaps://127.0.0.1/sub/leaf?k=a.1&x=2"
    again = stripped_copy(stripped)  # a copy of a copy knows the original URI only once it is given
    assert not hasattr(again, "_original_request_uri")
    again._original_request_uri = "coaps://example/x"
    assert again.get_request_uri() == "coaps://example/x"

    async def render() -> aiocoap.Message:
        response: aiocoap.Message = await telemetry.render(
            site._find_child_and_pathstripped_message(request("/telemetry"))[1])
        return response

    assert asyncio.run(render()).code == Code.CHANGED
    assert telemetry.seen[-1].opt.uri_query == ("k=a.1", "x=2")
