"""``python -m iotdtls_gateway ...`` is ``iotdtls-gateway ...``."""

from .cli.gateway import main

main()
