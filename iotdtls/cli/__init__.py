"""Command-line tools: iotdtls-server, iotdtls-client, iotdtls-demo, iotdtls-netem."""
