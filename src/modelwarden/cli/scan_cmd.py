"""``modelwarden scan PATH...``: audit artifacts statically and report (exit 0/1/2/4).

Kept import-light: the parser is built for every command, so heavy modules are
imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import sys

FORMATS = ("text", "json", "sarif", "html")
SEVERITIES = ("info", "low", "medium", "high", "critical")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH", help="model files or directories (searched recursively)")
    p.add_argument("--from-file", metavar="LIST", default=None,
                   help="also scan every path listed in LIST, one per line ('-' reads standard input)")
    p.add_argument("-f", "--format", choices=FORMATS, default="text", help="report format (default: text)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument(
        "--fail-on", choices=SEVERITIES, default=None, metavar="SEVERITY",
        help="exit 1 when a finding is at or above SEVERITY: " + ", ".join(SEVERITIES)
        + " (default: the policy's, medium)",
    )
    p.add_argument(
        "--policy", metavar="NAME|FILE", default=None,
        help="'default' (deny by capability), 'strict' (allowlist of pure-compute ops) or a TOML policy file",
    )
    p.add_argument(
        "--tf-version", metavar="VERSION", default="",
        help="the TensorFlow version that will load the models, for security advisories (default: from the model)",
    )
    p.add_argument(
        "--checkpoint", metavar="PREFIX", default="",
        help="a checkpoint (prefix of its .index/.data files) to audit against the scanned graphs",
    )
    p.add_argument("--no-progress", action="store_true", help="never draw a progress bar")
    p.add_argument("-j", "--jobs", type=_jobs, default=None, metavar="N",
                   help="scanner processes (default: one per core when there are many artifacts)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="keep a results store in DIR: an artifact whose bytes, rules and options are unchanged is not "
                        "analysed again (default: $MODELWARDEN_CACHE_DIR if set, else no store)")
    p.add_argument("--no-cache", action="store_true",
                   help="analyse every artifact; neither read nor write a results store (overrides the two above)")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="scan on a Ray cluster: ADDRESS of a running cluster, or 'auto' (join one, else start a local "
                        "one); needs pip install 'modelwarden[ray]'")
    p.add_argument("--allow-empty", action="store_true",
                   help="pass (exit 0) when no model artifact is found; by default that exits 4")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every file a directory walk did not scan (by default: counts per reason)")


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of jobs {text!r}") from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"jobs must be between 1 and 1024, got {value}")
    return value


def _paths(args: argparse.Namespace) -> list[str]:
    from modelwarden.errors import UsageError

    paths = list(args.paths)
    if args.from_file:
        try:
            if args.from_file == "-":
                text = sys.stdin.read()
            else:
                with open(args.from_file, encoding="utf-8", errors="surrogateescape") as fh:
                    text = fh.read(64 << 20)
        except OSError as exc:
            raise UsageError(f"cannot read --from-file {args.from_file}: {exc.strerror or exc}") from None
        paths += [line.rstrip("\r") for line in text.split("\n") if line.strip() and not line.startswith("#")]
    if not paths:
        raise UsageError("nothing to scan: give at least one PATH or --from-file LIST "
                         "(usage: modelwarden scan PATH... [--from-file LIST] [options])")
    return paths


def run(args: argparse.Namespace) -> int:
    from modelwarden.analysis.interface import Severity
    from modelwarden.policy import load_policy
    from modelwarden.report import renderer
    from modelwarden.report.text import progress_for, use_color
    from modelwarden.scanner import scan

    policy = load_policy(args.policy)
    if args.checkpoint:
        _check_checkpoint(args.checkpoint)
    if args.tf_version:
        _check_tf_version(args.tf_version)
    fail_on = Severity.parse(args.fail_on) if args.fail_on else (policy.fail_on or Severity.MEDIUM)
    progress = progress_for(sys.stderr, enabled=not args.no_progress)
    try:
        extra: dict[str, object] = {
            k: v for k, v in (("tf_version", args.tf_version), ("checkpoint", args.checkpoint)) if v
        }
        if args.format == "html":
            extra["callgraphs"] = True  # the HTML page draws them
        if args.ray is not None:
            from modelwarden.engine.run import make_engine

            extra["engine"] = make_engine("ray", args.jobs, address=args.ray)
        else:
            extra["jobs"] = args.jobs
        cache_dir = args.cache_dir or os.environ.get("MODELWARDEN_CACHE_DIR")
        if cache_dir and not args.no_cache:
            extra["cache"] = cache_dir
        report = scan(_paths(args), policy=policy, fail_on=fail_on, progress=progress, allow_empty=args.allow_empty,
                      **extra)
    finally:
        if progress is not None:
            progress.close()

    options: dict[str, object] = {"verbose": args.verbose}
    if args.format == "text":
        options["color"] = args.output is None and use_color(sys.stdout)
    text = renderer(args.format, **options).render(report)
    if args.output:
        _write(args.output, text)
    else:
        _stdout(text)
    if args.output or args.format != "text":
        # the text report says these itself; otherwise tell the person at the terminal
        from modelwarden.report import clean

        for e in report.errors:
            print(f"modelwarden: error: {clean(e.path)}: {clean(e.message)}", file=sys.stderr)
        if report.empty and not args.allow_empty:
            print("modelwarden: no model artifacts found (exit 4; --allow-empty accepts an empty scan)", file=sys.stderr)
    return report.exit_code


def ends_at_once(args: argparse.Namespace) -> bool:
    """A finished scan may skip the interpreter's teardown (see ``cli._exit_now``): the report is
    written, the pool and the results store are closed.  Not with ``--ray``: Ray's client
    disconnects from the cluster in its own exit handler."""
    return args.ray is None


def _check_tf_version(text: str) -> None:
    """A mistyped ``--tf-version`` is a usage error (the API instead reports it as an MW702 finding)."""
    from modelwarden.advisories import Version, VersionError
    from modelwarden.errors import UsageError

    try:
        Version.parse(text)
    except VersionError as exc:
        raise UsageError(f"--tf-version: {exc}") from None


def _check_checkpoint(prefix: str) -> None:
    """``--checkpoint`` must name an existing checkpoint: a usage error, not one per scanned model."""
    import os

    from modelwarden.errors import UsageError

    index = prefix if prefix.endswith(".index") else prefix + ".index"
    if not os.path.isfile(index):
        raise UsageError(f"--checkpoint {prefix}: no checkpoint index {index} (give the prefix of the "
                         ".index/.data-* files, e.g. variables/variables)")


def _stdout(text: str) -> None:
    try:
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    sys.stdout.write(text)
    sys.stdout.flush()


def _write(path: str, text: str) -> None:
    from modelwarden.errors import UsageError

    try:
        with open(path, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write report to {path}: {exc.strerror or exc}") from None
