"""``%skytorch`` and ``%%skytorch``: Compute lifecycles from notebook cells.

Registered by ``%load_ext skytorch``. Options are parsed with ``argparse`` (as
ipyparallel's ``%px`` does); bad arguments print a usage message and create
nothing. ``%skytorch?`` shows :data:`HELP`. Coroutines run on the kernel's own
loop through :func:`skytorch.client._sync.run_sync` (``nest_asyncio``).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import logging
import os
import shlex
import sys
from typing import Any, Sequence

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from skytorch.client import current_backend
from skytorch.client._sync import run_sync
from skytorch.notebook import lifecycle

logger = logging.getLogger(__name__)


class MagicUsageError(Exception):
    """Bad arguments to a magic; the message carries the usage text."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`MagicUsageError` instead of exiting the kernel."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise MagicUsageError(message, self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        # ``-h`` prints help through print_help, then calls exit: stay in the kernel
        raise MagicUsageError(message or "", "") if status else _HelpShown()


class _HelpShown(Exception):
    pass


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _compute_name(text: str) -> str:
    from skytorch.resources import validate_name

    try:
        return validate_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _identifier(text: str) -> str:
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not a Python variable name")
    return text


def _add_compute_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="container image of the Compute")
    parser.add_argument("--env", metavar="K=V", type=_key_value, nargs="+", action="extend", default=[],
                        help="environment variables (repeatable)")
    parser.add_argument("--resources", metavar="K=V", type=_key_value, nargs="+", action="extend", default=[],
                        help="resources of each replica, e.g. cpu=2 memory=4Gi (repeatable)")
    parser.add_argument("--as", dest="var", metavar="VAR", type=_identifier,
                        help="variable to bind the Compute to")
    parser.add_argument("--keep", action="store_true",
                        help="keep the Compute when the kernel shuts down (and from %%skytorch down / gc)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for Ready (default 300)")


def build_line_parser() -> _Parser:
    """The parser of ``%skytorch``."""
    parser = _Parser(prog="%skytorch", description="Manage SkyTorch Computes tied to this kernel.",
                     add_help=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    up = sub.add_parser("up", help="create a Compute, bind it and show its widget", add_help=False,
                        description="Create (or update) the Compute NAME, bind it to VAR (default: NAME with "
                                    "'-' turned into '_') and display its live widget. Returns at once unless --wait.")
    up.add_argument("name", metavar="NAME", type=_compute_name)
    _add_compute_options(up)
    up.add_argument("--wait", action="store_true", help="wait until the Compute is Ready")

    for action, text in (("suspend", "suspend Computes (scale to zero)"), ("resume", "resume suspended Computes"),
                         ("delete", "delete Computes")):
        p = sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".", add_help=False)
        p.add_argument("names", metavar="NAME", nargs="+", type=_compute_name)

    sub.add_parser("down", help="delete every Compute this kernel made, except the kept ones", add_help=False,
                   description="Delete every Compute this kernel made, except those created with --keep / keep=True.")
    ls = sub.add_parser("ls", help="show the dashboard of this kernel's Computes", add_help=False,
                        description="Show the live dashboard of this kernel's Computes.")
    ls.add_argument("--all", action="store_true", help="every Compute of the namespace")
    gc = sub.add_parser("gc", help="delete Computes whose kernel died without cleaning up", add_help=False,
                        description="Find Computes labelled with a kernel that is gone (killed, crashed) and "
                                    "delete them. Kernels on other hosts cannot be checked: --any-host counts "
                                    "them as gone.")
    gc.add_argument("--dry-run", action="store_true", help="list, do not delete")
    gc.add_argument("--any-host", action="store_true", help="also delete Computes of kernels on other hosts")
    init = sub.add_parser("init", help="configure the namespace and backend", add_help=False,
                          description="Configure the client before the first Compute (skytorch.client.init).")
    init.add_argument("--namespace", help="namespace of every Compute")
    init.add_argument("--backend", choices=("local", "kubernetes"), help="where Computes run")
    return parser


def build_cell_parser() -> _Parser:
    """The parser of ``%%skytorch``."""
    parser = _Parser(prog="%%skytorch", add_help=False,
                     description="Make sure the Compute NAME exists and is Ready, bind it (as `compute` unless "
                                 "--as), run the cell (top-level await works), and with --ephemeral delete the "
                                 "Compute when the cell ends, also on error or interrupt.")
    parser.add_argument("name", metavar="NAME", type=_compute_name)
    _add_compute_options(parser)
    parser.add_argument("--ephemeral", action="store_true", help="delete the Compute when the cell ends")
    return parser


def _help_text() -> str:
    line = build_line_parser()
    parts = [line.format_help().strip()]
    for action in line._subparsers._group_actions:  # type: ignore[union-attr]
        for sub in action.choices.values():
            parts.append(sub.format_help().strip())
    parts.append(build_cell_parser().format_help().strip())
    return "\n\n".join(parts)


#: The help ``%skytorch?`` shows.
HELP = _help_text()


def _make_compute(args: argparse.Namespace) -> Any:
    from skytorch.client import Compute

    kwargs: dict[str, Any] = {}
    if args.image:
        kwargs["image"] = args.image
    if args.env:
        kwargs["env"] = dict(args.env)
    if args.resources:
        kwargs["resources"] = dict(args.resources)
    if args.keep:
        kwargs["keep"] = True
        kwargs["labels"] = {lifecycle.KEEP_LABEL: "true"}
    return Compute(args.name, **kwargs)


@magics_class
class SkyTorchMagics(Magics):
    """The ``%skytorch`` line magic and ``%%skytorch`` cell magic."""

    @line_cell_magic
    def skytorch(self, line: str, cell: str | None = None) -> Any:
        """Manage SkyTorch Computes (see HELP, which replaces this docstring)."""
        lifecycle.install()
        if cell is None:
            return self._line(line)
        return self._cell(line, cell)

    skytorch.__doc__ = HELP

    # ------------------------------------------------------------------ parsing
    def _parse(self, parser: _Parser, line: str) -> argparse.Namespace | None:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            self._usage(str(exc), parser.format_usage())
            return None
        try:
            return parser.parse_args(argv)
        except MagicUsageError as exc:
            self._usage(str(exc), exc.usage or parser.format_usage())
            return None
        except _HelpShown:
            return None

    @staticmethod
    def _usage(message: str, usage: str) -> None:
        # Output for people, as the magic's own message (not a traceback): nothing was created.
        sys.stderr.write(f"{usage.rstrip()}\n%skytorch: error: {message}\n(nothing was created; %skytorch? shows help)\n")

    # ------------------------------------------------------------------ line
    def _line(self, line: str) -> Any:
        args = self._parse(build_line_parser(), line)
        if args is None:
            return None
        return getattr(self, f"_cmd_{args.command}")(args)

    def _cmd_up(self, args: argparse.Namespace) -> None:
        compute = _make_compute(args)
        var = args.var or args.name.replace("-", "_")
        self.shell.user_ns[var] = compute
        display(compute)
        if args.wait:
            run_sync(compute.ready(timeout=args.timeout))
        return None

    def _find(self, name: str) -> Any:
        compute = lifecycle.registry().find(name)
        if compute is not None:
            return compute
        for value in self.shell.user_ns.values():
            if type(value).__name__ == "Compute" and getattr(value, "name", None) == name:
                return value
        return None

    def _each(self, names: Sequence[str], action: str) -> None:
        missing = []
        for name in names:
            compute = self._find(name)
            if compute is None:
                missing.append(name)
                continue
            run_sync(getattr(compute, action)())
        if missing:
            if action == "delete":
                async def delete_by_name() -> list[str]:
                    backend = await current_backend()
                    return [n for n in missing if not await backend.delete(n)]

                missing = run_sync(delete_by_name())
            if missing:
                sys.stderr.write(f"%skytorch {action}: no Compute named {', '.join(missing)} "
                                 "in this kernel\n")

    def _cmd_suspend(self, args: argparse.Namespace) -> None:
        self._each(args.names, "suspend")

    def _cmd_resume(self, args: argparse.Namespace) -> None:
        self._each(args.names, "resume")

    def _cmd_delete(self, args: argparse.Namespace) -> None:
        self._each(args.names, "delete")

    def _cmd_down(self, args: argparse.Namespace) -> None:
        deleted = run_sync(lifecycle.registry().delete_all(include_kept=False))
        kept = [c.name for c in lifecycle.registry().computes() if getattr(c, "keep", False)]
        sys.stdout.write(f"Deleted {len(deleted)} Compute(s): {', '.join(deleted) or '-'}"
                         + (f"; kept: {', '.join(kept)}" if kept else "") + "\n")

    def _cmd_ls(self, args: argparse.Namespace) -> Any:
        from skytorch.notebook.widgets import dashboard

        return dashboard(all=args.all)

    def _cmd_gc(self, args: argparse.Namespace) -> None:
        orphans = run_sync(lifecycle.collect_garbage(dry_run=args.dry_run, any_host=args.any_host))
        verb = "Would delete" if args.dry_run else "Deleted"
        if not orphans:
            sys.stdout.write("No Computes left behind by dead kernels.\n")
        for orphan in orphans:
            sys.stdout.write(f"{verb} Compute {orphan.name} (kernel {orphan.kernel}: {orphan.reason})\n")

    def _cmd_init(self, args: argparse.Namespace) -> None:
        from skytorch.client import init

        if args.backend:
            os.environ["SKYTORCH_BACKEND"] = args.backend
        try:
            init(namespace=args.namespace)
        except (RuntimeError, ValueError) as exc:
            sys.stderr.write(f"%skytorch init: {exc}\n")
            return
        sys.stdout.write(f"SkyTorch configured: namespace={args.namespace or '(auto)'} "
                         f"backend={args.backend or os.environ.get('SKYTORCH_BACKEND', 'auto')}\n")

    # ------------------------------------------------------------------ cell
    def _cell(self, line: str, cell: str) -> Any:
        args = self._parse(build_cell_parser(), line)
        if args is None:
            return None
        compute = lifecycle.registry().find(args.name)
        if compute is None or compute.state in ("Deleted", "Failed") or args.keep or args.env or args.image \
                or args.resources:
            compute = _make_compute(args)
        self.shell.user_ns[args.var or "compute"] = compute
        try:
            if compute.state == "Suspended":
                run_sync(compute.resume())
            run_sync(compute.ready(timeout=args.timeout))
            return self._run_body(cell)
        finally:
            if args.ephemeral:
                try:
                    run_sync(compute.delete())
                except BaseException:
                    logger.warning("Could not delete ephemeral Compute %s", compute.name, exc_info=True)

    def _run_body(self, cell: str) -> Any:
        """Run the cell body in the user namespace; top-level ``await`` works; returns the last expression."""
        shell = self.shell
        source = shell.transform_cell(cell)
        tree = ast.parse(source, filename="<%%skytorch>")
        tree = shell.transform_ast(tree)
        last_expr = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last_expr = ast.Expression(tree.body.pop().value)
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        ns = shell.user_ns
        body_code = compile(tree, "<%%skytorch>", "exec", flags=flags, dont_inherit=True)
        result = eval(body_code, ns)  # noqa: S307 - the user's own cell, like IPython runs it
        if inspect.iscoroutine(result):
            run_sync(result)
        if last_expr is None:
            return None
        expr_code = compile(last_expr, "<%%skytorch>", "eval", flags=flags, dont_inherit=True)
        value = eval(expr_code, ns)  # noqa: S307
        if inspect.iscoroutine(value):
            value = run_sync(value)
        return value
