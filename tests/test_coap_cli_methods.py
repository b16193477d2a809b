"""iotdtls-coap-client's -m accepts every CoAP request method name (found while documenting the tool)."""

from __future__ import annotations

import pytest
from peers import free_udp_port

from iotdtls.cli import coap_client


@pytest.mark.parametrize("method", ["iPATCH", "ipatch", "post", "2"])
def test_ipatch_is_a_method(method: str) -> None:
    # plain coap:// to a port nobody listens on: a known method ends in a network error or timeout (exit 1)
    argv = ["-m", method, "--timeout", "1", f"coap://127.0.0.1:{free_udp_port()}/x"]
    with pytest.raises(SystemExit) as info:
        coap_client.main(argv)
    assert info.value.code != 2


@pytest.mark.parametrize("method", ["BREW", "69", "0"])
def test_unknown_method_is_a_usage_error(method: str) -> None:
    with pytest.raises(SystemExit) as info:
        coap_client.main(["-m", method, "coap://127.0.0.1:1/x"])
    assert info.value.code == 2
