"""Run the emulator as a process: ``python -m tests.emulator --port P --kubeconfig PATH``.

Prints ``listening on http://127.0.0.1:<port>`` on stdout once it serves (so a
parent process can wait for that line), writes the kubeconfig, and runs until
SIGTERM/SIGINT. ``--fake-operator`` also plays the operator.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from tests.emulator.fake_operator import FakeOperator
from tests.emulator.server import KubeEmulator


def _delay(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for this emulator here")
    parser.add_argument("--namespace", default="default", help="namespace of the kubeconfig's context")
    parser.add_argument("--token", default="emulator-token", help="bearer token clients must send ('' for none)")
    parser.add_argument("--fake-operator", action="store_true", help="also play the SkyTorch operator")
    parser.add_argument("--ready-delay", type=_delay, default=0.2,
                        help="fake operator: seconds to Ready=True, or 'none' to wait for the operator/ready hook")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)

    async def serve() -> None:
        emulator = KubeEmulator(token=args.token or None)
        await emulator.start(args.host, args.port)
        operator = None
        if args.fake_operator:
            operator = FakeOperator(emulator, ready_delay=args.ready_delay)
            await operator._start()
        if args.kubeconfig:
            emulator.write_kubeconfig(args.kubeconfig, args.namespace)
        print(f"listening on {emulator.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if operator is not None:
            await operator._stop()
        await emulator.stop()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
