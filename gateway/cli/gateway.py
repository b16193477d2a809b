"""iotdtls-gateway: run the gateway, check its configuration, show its spool, or run the demo.

    iotdtls-gateway run --config FILE.toml [--log-json] [-v | -vv | -q]
    iotdtls-gateway check --config FILE.toml
    iotdtls-gateway spool --config FILE.toml [--json] [--follow]
    iotdtls-gateway status --config FILE.toml [--json]
    iotdtls-gateway demo [--devices N] [--readings N] [--loss P] [--mqtt URL]

Exit status: 0 done, 1 the gateway could not start or failed, 2 usage or configuration errors (one line each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import NoReturn

from iotdtls.cli.runtime import (
    ToolParser,
    add_verbosity,
    add_version,
    run_tool,
    set_verbosity,
    setup_logging,
    verbosity,
)

from ..config import ConfigError, GatewayConfig, load
from ..logs import setup

PROG = "iotdtls-gateway"


def fail(message: str, status: int) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(status)


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(prog=PROG, description="CoAPs devices in, a durable spool, MQTT out.")
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve until SIGTERM/SIGINT; ready, it logs \"serving coaps://HOST:PORT: ...\"")
    run.add_argument("--config", required=True, metavar="FILE.toml")
    run.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")
    add_verbosity(run, verbose_help="each -v logs one level more than [log] level (info by default: -v is debug), "
                  "-q only errors")
    check = sub.add_parser("check", help="validate a configuration: exit 0, or 2 with one line per problem")
    check.add_argument("--config", required=True, metavar="FILE.toml")
    spool = sub.add_parser("spool", help="show what the spool holds")
    spool.add_argument("--config", required=True, metavar="FILE.toml")
    spool.add_argument("--json", action="store_true", help="one JSON line per message (the envelope)")
    spool.add_argument("--follow", action="store_true", help="keep printing messages as they arrive")
    status = sub.add_parser("status", help="the running gateway's figures, from its [metrics] server")
    status.add_argument("--config", required=True, metavar="FILE.toml")
    status.add_argument("--json", action="store_true", help="the /status.json document as it came")
    demo = sub.add_parser("demo", help="a gateway with simulated devices in a temporary data dir")
    demo.add_argument("--devices", type=int, default=3, metavar="N", help="simulated devices (default 3)")
    demo.add_argument("--readings", type=int, default=3, metavar="N", help="readings per device (default 3)")
    demo.add_argument("--loss", type=float, default=0.3, metavar="P",
                      help="loss each way for one device, through the lossy relay (default 0.3)")
    demo.add_argument("--mqtt", metavar="URL", help="also publish to this broker (mqtt://host:port)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the lossy relay")
    for command in (check, spool, status, demo):
        add_verbosity(command)
    return p


LEVELS = ("error", "warning", "info", "debug")


def run_level(configured: str, args: argparse.Namespace) -> str:
    """``[log] level`` moved by ``-v`` (one level more each, as ``-v`` was "debug" when info was the default) or
    ``-q`` (errors only: no ready line)."""
    level = verbosity(args)
    if level < 0:
        return "error"
    index = LEVELS.index(configured) if configured in LEVELS else LEVELS.index("info")
    return LEVELS[min(index + level, len(LEVELS) - 1)]


def load_config(path: str) -> GatewayConfig:
    try:
        return load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        sys.exit(2)


def cmd_check(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    print(f"{args.config}: OK (data_dir {config.data_dir}, coaps {config.coaps.host}:{config.coaps.port}, "
          f"{'mqtt ' + config.mqtt.url if config.mqtt else 'no mqtt: messages stay in the spool'})")


def cmd_run(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the daemon takes it: a reload while starting never kills
    config = load_config(args.config)
    set_verbosity(verbosity(args))
    setup("json" if args.log_json else config.log.format, run_level(config.log.level, args))
    os.umask(0o077)  # every file the gateway creates is its own
    from ..daemon import Daemon
    from ..gc_tuning import tune_collector
    from ..service import Gateway, StartError

    tune_collector()  # fewer and shorter pauses of the garbage collector under load (gc_tuning.py)

    def relog(new: GatewayConfig) -> None:  # a reload (SIGHUP) that changed [log]: the command line still wins
        setup("json" if args.log_json else new.log.format, run_level(new.log.level, args))

    async def main() -> None:
        gateway = Gateway(config)
        daemon = Daemon(gateway, relog)  # systemd's NOTIFY_SOCKET and watchdog, SIGHUP, SIGTERM/SIGINT
        try:
            await gateway.start()
        except StartError as exc:
            daemon.failed(str(exc))
            fail(str(exc), 1)
        await daemon.serve()  # READY=1 ... STOPPING=1
        await gateway.stop()

    asyncio.run(main())


def cmd_status(args: argparse.Namespace) -> None:
    from .status import StatusUnavailable, fetch_status, summary

    config = load_config(args.config)
    try:
        doc = fetch_status(config)
    except StatusUnavailable as exc:
        fail(str(exc), 1)
    print(json.dumps(doc) if args.json else "\n".join(summary(doc)))


def cmd_spool(args: argparse.Namespace) -> None:
    from ..spool import SpoolError, SpoolStore

    config = load_config(args.config)
    if not config.spool_path.exists():
        fail(f"no spool at {config.spool_path} (the gateway has not run with this data_dir yet)", 1)
    try:
        store = SpoolStore(config.spool_path)
    except SpoolError as exc:
        fail(str(exc), 1)
    totals = store.totals_now()
    if not args.json:
        oldest = "-" if totals.oldest_at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                     time.gmtime(totals.oldest_at))
        print(f"{config.spool_path}: {totals.messages} messages, {totals.bytes} bytes, oldest {oldest}, "
              f"{totals.keys} idempotency keys remembered")
    after = 0
    while True:
        rows = store.read(after, 500)
        for row in rows:
            if args.json:
                sys.stdout.write(row.body.decode("utf-8", "replace") + "\n")
            else:
                envelope = json.loads(row.body)
                print(f"  #{row.seq} {row.device} {row.msg_id} {envelope.get('received_at', '')} "
                      f"{json.dumps(envelope.get('data'))[:80]}")
            after = row.seq
        sys.stdout.flush()
        if not rows:
            if not args.follow:
                return
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command != "run":
        setup_logging(PROG, verbosity(args))
    run_tool(PROG, lambda: dispatch(args))


def dispatch(args: argparse.Namespace) -> None:
    try:
        if args.command == "check":
            cmd_check(args)
        elif args.command == "run":
            cmd_run(args)
        elif args.command == "status":
            cmd_status(args)
        elif args.command == "spool":
            cmd_spool(args)
        else:
            from .demo import run_demo

            sys.exit(run_demo(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
