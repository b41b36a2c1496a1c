"""``modelwarden doctor``: which isolation layers this host offers and which are active.

Exit 0 when some sandbox backend works, 3 when none does.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--probe", action="store_true",
                   help="also start a real sandboxed worker and report what it sees (takes a few seconds)")


def run(args: argparse.Namespace) -> int:
    from modelwarden.sandbox.doctor import diagnose

    d = diagnose(probe=args.probe)
    if args.json:
        print(json.dumps(d.to_json(), indent=2))
        return 0 if d.usable else 3
    for c in d.checks:
        mark = "ok  " if c.ok else ("MISSING" if c.required else "absent ")
        print(f"[{mark:7}] {c.name:18} {c.detail}")
    print()
    if d.usable:
        print(f"modelwarden run will use the '{d.backend}' backend.")
    else:
        print("No sandbox backend works on this host: `modelwarden run` will refuse to execute models.")
    if d.probe is not None:
        st = d.probe.get("status", {})
        print("\nActive in a real worker:")
        for key, label in (("CapEff", "effective capabilities"), ("CapBnd", "bounding set"),
                           ("NoNewPrivs", "no_new_privs"), ("Seccomp", "seccomp mode (2 = filter)")):
            print(f"  {label:28} {st.get(key, '?')}")
        print(f"  {'pid / uid inside':28} {d.probe.get('pid')} / {d.probe.get('uid')}")
        uid_map = d.probe.get("uid_map") or []
        print(f"  {'host uid of the worker':28} {uid_map[1] if len(uid_map) > 1 else '?'}")
        print(f"  {'network interfaces':28} {', '.join(d.probe.get('net_interfaces', [])) or 'none'}")
        print(f"  {'filesystem root':28} {' '.join(d.probe.get('root', []))}")
        print(f"  {'sockets':28} " + ", ".join(f"{k} {v}" for k, v in d.probe.get("sockets", {}).items()))
        print(f"  {'limits':28} {d.probe.get('layers', {})}")
    sys.stdout.flush()
    return 0 if d.usable else 3
