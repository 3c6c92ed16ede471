"""``python -m ingest``: command-line entry points of the ingest package."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ingest import cli
from ingest.cli import Command, Handler, SubParsers
from ingest.settings import StackSettings, load

if TYPE_CHECKING:
    from ingest.intake import IntakeSettings


def _add_smoke(sub: SubParsers) -> Handler:
    smoke = sub.add_parser("smoke", help="round trip an image through MinIO, Kafka, the loop and PostgreSQL")
    smoke.add_argument("--timeout", type=float, default=60.0)

    def run(args: argparse.Namespace) -> int:
        from ingest.smoke import run_smoke

        return cli.print_result({"smoke": "ok", **run_smoke(load(StackSettings), timeout_s=args.timeout)})

    return run


def _intake_settings(args: argparse.Namespace) -> IntakeSettings:
    from ingest.intake import IntakeSettings

    return cli.settings_from(IntakeSettings, args, host="host", port="port", topic="topic")


def _add_serve(sub: SubParsers) -> Handler:
    serve = sub.add_parser("serve", help="the intake API and the review console (uvicorn)")
    serve.add_argument("--host", help="default CIFAKE_INTAKE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default CIFAKE_INTAKE_PORT or 8080; 0 picks a free one")
    serve.add_argument("--pid-file", type=Path, help="only names the process for `deploy/stack down`")

    def run(args: argparse.Namespace) -> int:
        from ingest.api.app import serve

        return serve(load(StackSettings), _intake_settings(args))

    return run


def _add_submit(sub: SubParsers) -> Handler:
    submit = sub.add_parser("submit", help="submit image files, folders and zip archives for screening")
    submit.add_argument("paths", nargs="+", metavar="PATH")
    submit.add_argument("--source", default="batch", help="recorded as the images' source (default: batch)")
    submit.add_argument("--topic", help="publish here instead of CIFAKE_INTAKE_TOPIC / images.submitted")
    submit.add_argument(
        "--wait", action="store_true", help="wait for the verdicts, print a table, write a CSV"
    )
    submit.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)")
    submit.add_argument("--csv", type=Path, help="CSV to write (default with --wait: submit-<time>.csv)")
    submit.add_argument("--show", type=int, default=25, help="rows of the table to print")
    submit.add_argument("--no-progress", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from ingest.submit import run_submit

        return run_submit(
            load(StackSettings),
            _intake_settings(args),
            args.paths,
            source=args.source,
            wait=args.wait,
            timeout=args.timeout,
            csv_path=args.csv,
            show=args.show,
            out=sys.stdout,
            err=sys.stderr,
            progress=not args.no_progress and os.environ.get("CI") != "true",
        )

    return run


def _add_keys(sub: SubParsers) -> Handler:
    keys = sub.add_parser("keys", help="platform API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key and print it (once: only its hash is stored)")
    create.add_argument("name")
    keys.add_parser("list", help="list keys (never the secrets)")
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    return _accounts


def _add_moderators(sub: SubParsers) -> Handler:
    mods = sub.add_parser("moderators", help="review console accounts")
    mods_sub = mods.add_subparsers(dest="mods_command", required=True)
    add = mods_sub.add_parser(
        "add", help="add a moderator (password: prompt, --password-stdin, or --generate)"
    )
    add.add_argument("name")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    how.add_argument("--generate", action="store_true", help="generate a password and print it")
    add.add_argument("--replace", action="store_true", help="reset the password of an existing moderator")
    return _accounts


def _add_dlq(sub: SubParsers) -> Handler:
    from ingest.dlq import add_dlq_command, run_dlq_command

    add_dlq_command(sub)

    def run(args: argparse.Namespace) -> int:
        return run_dlq_command(args, load(StackSettings))

    return run


def _read_password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, whether it was generated and must be printed)."""
    from ingest.accounts import generate_password

    if args.generate:
        return generate_password(), True
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    if not sys.stdin.isatty():
        raise SystemExit("no terminal to prompt on: use --password-stdin or --generate")
    first = getpass.getpass(f"password for {args.name}: ")
    if first != getpass.getpass("again: "):
        raise SystemExit("the passwords differ")
    return first, False


def _accounts(args: argparse.Namespace) -> int:
    from ingest import accounts
    from ingest.db import Database

    db = Database(load(StackSettings).pg)
    with contextlib.closing(db), db.connection() as conn:
        if args.command == "keys" and args.keys_command == "create":
            record, key = accounts.create_api_key(conn, args.name)
            print(f"created key {record.id} for {record.name}; it is shown only now:\n{key}")
        elif args.command == "keys" and args.keys_command == "list":
            for key_id, name, created, revoked in accounts.list_api_keys(conn):
                print(f"{key_id}  {name:<24} created {created}" + (f"  revoked {revoked}" if revoked else ""))
        elif args.command == "keys":
            if not accounts.revoke_api_key(conn, args.key_id):
                raise SystemExit(f"no active key {args.key_id}")
            print(f"revoked {args.key_id}")
        else:
            password, show = _read_password(args)
            try:
                stored = accounts.set_moderator(conn, args.name, password, replace=args.replace)
            except ValueError as e:
                raise SystemExit(str(e)) from None
            if not stored:
                raise SystemExit(f"moderator {args.name} exists (--replace resets the password)")
            print(f"moderator {args.name} {'updated' if args.replace else 'added'}")
            if show:
                print(f"password: {password}")
    return 0


COMMANDS: list[Command] = [_add_smoke, _add_serve, _add_keys, _add_moderators, _add_submit, _add_dlq]


def main(argv: list[str] | None = None) -> int:
    return cli.main("python -m ingest", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
