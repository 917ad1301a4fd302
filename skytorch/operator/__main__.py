"""``python -m skytorch.operator``: run the SkyTorch operator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from skytorch.errors import BackendError
from skytorch.operator import run
from skytorch.operator.settings import OperatorConfig, OperatorConfigError


def main(argv: list[str] | None = None) -> int:
    """Parse the command line (which overrides ``SKYTORCH_*`` variables) and run the operator."""
    parser = argparse.ArgumentParser(
        prog="python -m skytorch.operator",
        description="Reconcile SkyTorch Computes into a StatefulSet and a Service each.")
    parser.add_argument("-n", "--namespace", action="append", dest="namespaces", metavar="NS",
                        help="namespace to watch (repeatable; default: SKYTORCH_OPERATOR_NAMESPACES, else all)")
    parser.add_argument("--server-image", help="image of Computes that name none (default: SKYTORCH_SERVER_IMAGE)")
    parser.add_argument("--kubeconfig", help="kubeconfig to use instead of the in-cluster service account")
    parser.add_argument("--liveness", dest="liveness_endpoint",
                        help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = OperatorConfig.from_env(namespaces=args.namespaces, server_image=args.server_image,
                                         kubeconfig=args.kubeconfig, liveness_endpoint=args.liveness_endpoint)
    except OperatorConfigError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(run(config))
    except BackendError as exc:  # no credentials, or an unreadable kubeconfig: say so, without a traceback
        parser.exit(1, f"{parser.prog}: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
