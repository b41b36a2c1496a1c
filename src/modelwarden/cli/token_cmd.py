"""``modelwarden token``: create, list and revoke the server's bearer tokens.

The token is printed once, at creation; only its SHA-256 hash is stored.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="token_command", metavar="ACTION", parser_class=type(p))
    c = sub.add_parser("create", help="create a token (printed once)")
    c.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="model the token may use (repeatable; '*' for every model)")
    c.add_argument("--scope", required=True, choices=("predict", "metadata", "admin", "metrics"),
                   help="metadata: status+metadata; predict: + predict/classify/regress; admin: everything")
    c.add_argument("--expires", help="lifetime (30d, 12h) or an ISO 8601 date/time")
    c.add_argument("--note", default="", help="free text shown by `token list` (who/what it is for)")
    c.add_argument("--json", action="store_true", help="print {id, token, ...} as JSON")
    lst = sub.add_parser("list", help="list tokens (ids, scopes, models, state; never the tokens)")
    lst.add_argument("--json", action="store_true")
    r = sub.add_parser("revoke", help="revoke a token by id (a running server stops accepting it within a second)")
    r.add_argument("id", help="token id (the 12 hex digits after mwt_)")
    for q in (c, lst, r):
        q.add_argument("--token-db", help="token store (default $MODELWARDEN_TOKEN_DB or ~/.config/modelwarden/tokens.json)")


def _store(args: argparse.Namespace):
    from modelwarden.server.auth import TokenStore, default_store_path

    return TokenStore(args.token_db or os.environ.get("MODELWARDEN_TOKEN_DB") or default_store_path())


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    from modelwarden.errors import UsageError
    from modelwarden.server.auth import parse_expiry

    action = getattr(args, "token_command", None)
    if action is None:
        raise UsageError("choose an action: create, list or revoke")
    store = _store(args)
    if action == "create":
        from modelwarden.server.config import NAME_RE

        bad = [m for m in args.model if m != "*" and not NAME_RE.match(m)]
        if bad:
            raise UsageError(f"--model {bad[0][:80]!r}: not a model name (1-128 letters, digits, '_', '.', '-'; "
                             "or '*' for every model)")
        expires = parse_expiry(args.expires) if args.expires else None
        if expires is not None and expires <= time.time():
            raise UsageError("--expires is in the past")
        token, rec = store.create(args.model, args.scope, expires, args.note)
        if args.json:
            print(json.dumps({"id": rec.id, "token": token, "scope": rec.scope, "models": rec.models,
                              "expires": _when(rec.expires) if rec.expires else None}))
        else:
            print(token)
            print(f"id {rec.id} · scope {rec.scope} · models {', '.join(rec.models)} · expires "
                  f"{_when(rec.expires) if rec.expires else 'never'} (shown once; only its hash is stored)",
                  file=__import__("sys").stderr)
        return 0
    if action == "list":
        store.load()
        recs = sorted(store.records.values(), key=lambda r: r.created)
        if args.json:
            print(json.dumps([{"id": r.id, "scope": r.scope, "models": r.models, "created": _when(r.created),
                               "expires": _when(r.expires) if r.expires else None, "state": r.state(),
                               "note": r.note} for r in recs], indent=1))
        elif not recs:
            print(f"no tokens in {store.path} (create one with `modelwarden token create --model NAME --scope predict`)")
        else:
            for r in recs:
                print(f"{r.id}  {r.state():8}  {r.scope:8}  {','.join(r.models):20}  created {_when(r.created)}  "
                      f"expires {_when(r.expires) if r.expires else 'never'}  {r.note}")
        return 0
    rec = store.revoke(args.id)
    print(f"revoked {rec.id} at {_when(rec.revoked)}")
    return 0
