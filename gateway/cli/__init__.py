"""Command-line tools of the gateway: thin layers over the modules (parse, call, print)."""
