"""iotdtls_mp: a DTLS 1.2 PSK + CoAP client for MicroPython devices."""
