"""iotdtls-gateway: devices in over CoAPs (DTLS 1.2, PSK and raw public keys), a durable spool, MQTT out.

The folder is ``gateway/``; the package is ``iotdtls_gateway``. Logic (registry, spool, envelope) is kept free of
asyncio and sockets where possible, with time passed in; ``service`` wires it to the network.
"""

__version__ = "0.1.0"
