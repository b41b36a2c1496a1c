"""``modelwarden run``: execute a model inside the sandbox and print its outputs as JSON.

Exit codes: 0 ok; 2 usage/input error; 3 no sandbox available; 10 refused by the scan;
11 blocked by the in-sandbox re-check; 12 memory limit; 13 deadline; 14 worker crashed;
15 invalid input; 16 output too large; 17 protocol violation; 18 load failed;
19 execution failed; 3 also when TensorFlow is not installed (the message says how to install it);
1 other sandbox errors.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from modelwarden.cli.scan_cmd import SEVERITIES

UNSAFE_FLAG = "--unsafe-no-sandbox-run-untrusted-code"
MAX_JSON_INPUT = 256 << 20


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="SavedModel directory, .keras or .tflite file")
    p.add_argument("--signature", help="signature to run (default: serving_default, or the only one)")
    p.add_argument("--inputs", metavar="JSON|@FILE",
                   help='inputs as a JSON object {"name": nested list}, or @file.json')
    p.add_argument("--input", action="append", default=[], metavar="NAME=@ARRAY.npy",
                   help="one input from a .npy file (repeatable; dtype must match the signature)")
    p.add_argument("--output", metavar="FILE.json|FILE.npz", help="write outputs here instead of stdout")
    p.add_argument("--memory", default="2GiB", help="memory limit (default 2GiB)")
    p.add_argument("--timeout", default="30s", help="wall-clock deadline per call (default 30s)")
    p.add_argument("--load-timeout", default="120s", help="deadline for start-up and model load (default 120s)")
    p.add_argument("--cpus", type=int, help="CPUs the worker may use")
    p.add_argument("--cpu-time", default="900s", help="CPU-time budget of the worker (default 900s)")
    p.add_argument("--max-processes", type=int, default=256, help="tasks (processes + threads) limit (default 256)")
    p.add_argument("--tmpfs", default="64MiB", help="size of the private /tmp (default 64MiB)")
    p.add_argument("--max-output", default="256MiB", help="largest total output accepted (default 256MiB)")
    p.add_argument("--backend", default="auto", choices=("auto", "namespaces", "bwrap", "gvisor"),
                   help="isolation backend (default auto; see `modelwarden doctor`)")
    p.add_argument("--skip-scan", action="store_true",
                   help="do not run the static scan gate (the sandbox still applies)")
    p.add_argument("--policy", default=None, help="scan policy: default, strict or a TOML file")
    p.add_argument("--fail-on", default=None, choices=SEVERITIES, metavar="SEVERITY",
                   help="refuse models with findings at or above SEVERITY: " + ", ".join(SEVERITIES))
    p.add_argument(UNSAFE_FLAG, dest="unsafe_no_sandbox", action="store_true",
                   help="run WITHOUT ANY SANDBOX: the model's code runs as you, with your files and network")


def _limits(args: argparse.Namespace) -> Any:
    from modelwarden.sandbox.interface import SandboxLimits, parse_duration, parse_size

    return SandboxLimits(
        memory_bytes=parse_size(args.memory), timeout_s=parse_duration(args.timeout),
        load_timeout_s=parse_duration(args.load_timeout), cpus=args.cpus,
        cpu_seconds=max(1, int(math.ceil(parse_duration(args.cpu_time)))), max_processes=args.max_processes,
        tmpfs_bytes=parse_size(args.tmpfs), max_output_bytes=parse_size(args.max_output),
    )


def _read_json_inputs(text: str | None) -> dict[str, Any]:
    from modelwarden.errors import InputError, UsageError

    if not text:
        return {}
    source = "--inputs"
    if text.startswith("@"):
        path = Path(text[1:])
        source = str(path)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_JSON_INPUT + 1)
        except OSError as exc:
            raise InputError(str(path), f"cannot read: {exc.strerror}") from None
        if len(raw) > MAX_JSON_INPUT:
            raise InputError(str(path), f"larger than {MAX_JSON_INPUT} bytes; use --input NAME=@file.npy")
        text = raw.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{source}: not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise UsageError(f'{source}: expected a JSON object {{"input_name": value}}')
    return value


def _read_npy_inputs(specs: list[str]) -> dict[str, Any]:
    import numpy as np

    from modelwarden.errors import InputError, UsageError

    out: dict[str, Any] = {}
    for item in specs:
        name, sep, ref = item.partition("=")
        if not sep or not name or not ref.startswith("@"):
            raise UsageError(f"--input {item!r}: expected NAME=@file.npy")
        try:
            out[name] = np.load(ref[1:], allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(ref[1:], f"not a readable .npy array: {exc}") from None
    return out


def _convert(name: str, value: Any, dtype: str) -> Any:
    """A JSON value as an array of the signature's dtype, refusing lossy or ragged conversions."""
    import numpy as np

    from modelwarden.sandbox import protocol
    from modelwarden.sandbox.errors import InvalidInput

    try:
        raw = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {name!r}: not a rectangular array ({exc})") from None
    if raw.dtype.kind not in "biuf":
        raise InvalidInput(f"input {name!r}: JSON values must be numbers or booleans (got {raw.dtype})")
    target = protocol.DTYPES.get(dtype)  # the protocol's own list: a worker-reported name is never parsed
    if target is None:
        raise InvalidInput(f"input {name!r}: the signature's dtype {dtype!r} cannot be given as JSON")
    if target.kind in "iu" and raw.dtype.kind == "f" and not np.all(np.mod(raw, 1) == 0):
        raise InvalidInput(f"input {name!r}: {dtype} expects integers")
    if target.kind in "iu" and raw.size and (raw.min() < np.iinfo(target).min or raw.max() > np.iinfo(target).max):
        raise InvalidInput(f"input {name!r}: values out of range for {dtype}")
    return raw.astype(target)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from modelwarden.errors import UsageError
    from modelwarden.sandbox import Sandbox

    limits = _limits(args)
    json_inputs = _read_json_inputs(args.inputs)
    npy_inputs = _read_npy_inputs(args.input)
    dup = set(json_inputs) & set(npy_inputs)
    if dup:
        raise UsageError(f"inputs given twice: {', '.join(sorted(dup))}")
    if args.output and not args.output.endswith((".json", ".npz")):
        raise UsageError("--output must end in .json or .npz")
    from modelwarden.cli import deps

    deps.require("run", deps.RUN)
    backend = args.backend
    if args.unsafe_no_sandbox:
        backend = "unsafe-none"
        print(f"modelwarden: WARNING: {UNSAFE_FLAG}: the model runs with NO isolation, as your user, "
              "with your files and network", file=sys.stderr)
    # The outputs are written before the worker is torn down (kill, reap, cgroups removed), which
    # still happens before we exit: the caller sees the result as soon as it exists.
    # one call: the eager load is the quicker way to it (a session's faster warm calls cost a slower
    # load on large models: MobileNetV2 1.3 s eagerly, 1.6-1.75 s in a session; docs/sandbox.md)
    with Sandbox(limits, backend=backend, policy=args.policy, fail_on=args.fail_on, session_call=False) as sb:
        model = sb.load(args.model, scan=not args.skip_scan)
        sig = model.signature(args.signature)
        inputs: dict[str, Any] = dict(npy_inputs)
        for name, value in json_inputs.items():
            spec = sig.inputs.get(name)
            inputs[name] = _convert(name, value, spec.dtype) if spec else np.asarray(value)
        outputs = model.predict(inputs, signature=sig.name)
        _write(outputs, args.output)
    return 0


def _write(outputs: dict[str, Any], output: str | None) -> None:
    """The outputs to ``output`` (.npz or .json) or as JSON to stdout, flushed."""
    if output and output.endswith(".npz"):
        import numpy as np

        np.savez(output, **outputs)
        return
    from modelwarden.cli.tensor_json import write_outputs

    if output:
        with open(output, "w") as f:
            write_outputs(outputs, f)
    else:
        write_outputs(outputs, sys.stdout)
        sys.stdout.flush()
