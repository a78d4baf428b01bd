"""`linkd login` and `linkd logout`: registry credentials in Docker's config.json
(linkd.runtime.images.login does the work). Declared in linkd.cli.main, imported only
when one of them runs."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from linkd.core.docker_config import Credentials
from linkd.errors import UsageError


def _ask(prompt: str, secret: bool) -> str:
    if not sys.stdin.isatty():
        raise UsageError(f"no {prompt.lower()} given and no terminal to ask on: use "
                         "-u USER with --password-stdin (or -p PASSWORD)")
    try:
        return getpass.getpass(f"{prompt}: ") if secret else input(f"{prompt}: ")
    except EOFError:
        raise UsageError(f"no {prompt.lower()} given") from None


def cmd_login(args: argparse.Namespace) -> int:
    from linkd.runtime.images import login

    server = login.server_name(args.server)
    if args.password_stdin and not args.username:
        raise UsageError("--password-stdin needs --username (stdin holds the password)")
    user = args.username or _ask("Username", secret=False).strip()
    if args.password_stdin:
        password = sys.stdin.read(1 << 16).rstrip("\r\n")
    elif args.password is not None:
        print("warning: a password on the command line is seen by every user of this "
              "machine (ps); use --password-stdin", file=sys.stderr)
        password = args.password
    else:
        password = _ask("Password", secret=True)
    if not user or not password:
        raise UsageError("a user name and a password are needed")
    where = asyncio.run(login.login(server, Credentials(user, password)))
    print(f"Login Succeeded: {user} at {server} (kept in {where})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from linkd.runtime.images import login

    server = login.server_name(args.server)
    removed = asyncio.run(login.logout(server))
    if removed:
        print(f"Removed the login for {server}: {', '.join(removed)}")
    else:
        print(f"Not logged in to {server}")
    return 0
