"""``modelwarden doctor``: which isolation layers this host offers, which are active, and
whether the packages ``run`` and ``serve`` need are installed.

Exit 0 when ``modelwarden run`` can execute models here, 3 when it cannot (no sandbox
backend works, or TensorFlow is missing).  A missing ``serve`` extra is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--probe", action="store_true",
                   help="also start a real sandboxed worker and report what it sees (takes a few seconds)")


def dependency_checks() -> list:
    """One check per package ``run``/``serve`` import, with the command that installs a missing one."""
    from modelwarden.advisories import installed_tf
    from modelwarden.cli import deps
    from modelwarden.sandbox.doctor import Check

    out = []
    for req in deps.RUN + deps.SERVE:
        if deps.installed(req.module):
            version = installed_tf() if req.module == "tensorflow" else None
            detail = f"installed{f' ({version[1]} {version[0]})' if version else ''}; needed by {req.needed_by}"
        else:
            detail = f"not installed, needed by {req.needed_by}; install with: {deps.install_command(req.extra)}"
        out.append(Check(f"python {req.module}", deps.installed(req.module), detail,
                         required=req.extra != "serve"))
    return out


def _kv(value: object) -> str:
    """A probe value as text: mappings as ``key value, ...``, lists joined."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_kv(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "none"
    return str(value) if value != "" else "-"


def run(args: argparse.Namespace) -> int:
    from modelwarden.sandbox.doctor import diagnose

    d = diagnose(probe=args.probe)
    dep_checks = dependency_checks()
    can_run = d.usable and all(c.ok for c in dep_checks if c.required)
    if args.json:
        out = d.to_json()
        out["dependencies"] = [c.__dict__ for c in dep_checks]
        out["can_run"] = can_run
        print(json.dumps(out, indent=2))
        return 0 if can_run else 3
    for c in [*d.checks, *dep_checks]:
        mark = "ok  " if c.ok else ("MISSING" if c.required else "absent ")
        print(f"[{mark:7}] {c.name:18} {c.detail}")
    print()
    if not d.usable:
        print("No sandbox backend works on this host: `modelwarden run` will refuse to execute models.")
    elif not can_run:
        print(f"`modelwarden run` would use the '{d.backend}' backend, but cannot execute models until the "
              "MISSING packages above are installed.")
    else:
        print(f"modelwarden run will use the '{d.backend}' backend.")
    if d.probe is not None:
        p = d.probe
        st = p.get("status", {})
        print("\nActive in a real worker:")
        for key, label in (("CapEff", "effective capabilities"), ("CapBnd", "bounding set"),
                           ("NoNewPrivs", "no_new_privs"), ("Seccomp", "seccomp mode (2 = filter)")):
            print(f"  {label:28} {st.get(key, '?')}")
        print(f"  {'pid / uid inside':28} {p.get('pid')} / {p.get('uid')}")
        uid_map = p.get("uid_map") or []
        print(f"  {'host uid of the worker':28} {uid_map[1] if len(uid_map) > 1 else '?'}")
        print(f"  {'network interfaces':28} {_kv(p.get('net_interfaces', []))}")
        print(f"  {'filesystem root':28} {_kv(p.get('root', []))}")
        print(f"  {'sockets':28} {_kv(p.get('sockets', {}))}")
        layers = p.get("layers", {})
        for key, value in (layers.items() if isinstance(layers, dict) else [("layers", layers)]):
            print(f"  {str(key):28} {_kv(value)}")
    sys.stdout.flush()
    return 0 if can_run else 3
