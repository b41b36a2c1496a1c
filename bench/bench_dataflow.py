"""How much does dataflow analysis add to a scan?  Target: at most 2x (issue: dataflow analysis).

    python bench/bench_dataflow.py [--quick]

Measures, in one process and one run, read + analyse time of the same artifact
with every rule versus every rule except the dataflow ones (MW600-MW616), on
(a) a Keras MobileNetV2 SavedModel export (built once with TensorFlow into
bench/.work) and (b) a synthetic SavedModel whose library holds 10,000
functions (chains, branches on variables, a few cycles), written with
modelwarden's own protobuf schema.  Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from modelwarden.analysis.interface import AnalysisContext, ScanOptions
from modelwarden.analysis.registry import rule_classes
from modelwarden.catalog import load_catalog
from modelwarden.formats import tfproto
from modelwarden.formats.interface import Candidate
from modelwarden.ir import ArtifactFormat
from modelwarden.policy.interface import Policy
from modelwarden.scanner import paused_gc, read_artifact

WORK = Path(__file__).parent / ".work"
DATAFLOW_RULES = {"MW600", "MW610"}  # ids owned by DataflowRule and CheckpointAuditRule


def build_mobilenet(path: Path) -> None:
    code = (
        "import sys, tensorflow as tf\n"
        "m = tf.keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))\n"
        "m.export(sys.argv[1])\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, capture_output=True)


def build_big_library(path: Path, n: int = 10_000) -> None:
    """A SavedModel whose signature calls a chain of n functions with variable-gated If nodes."""
    sm = tfproto.message_class("SavedModel")()
    mg = sm.meta_graphs.add()
    mg.meta_info_def.tags.append("serve")
    gd = mg.graph_def
    gd.node.add(name="x", op="Placeholder").attr["dtype"].type = 1
    v = gd.node.add(name="flag", op="VarHandleOp")
    v.attr["shared_name"].s = b"flag"
    call = gd.node.add(name="call", op="StatefulPartitionedCall", input=["x", "flag"])
    call.attr["f"].func.name = "f0"
    for i in range(n):
        fd = gd.library.function.add()
        fd.signature.name = f"f{i}"
        fd.signature.input_arg.add(name="x", type=1)
        fd.signature.input_arg.add(name="h", type=20)
        fd.signature.output_arg.add(name="y", type=1)
        r = fd.node_def.add(name="r", op="ReadVariableOp", input=["h"])
        r.attr["dtype"].type = 1
        g = fd.node_def.add(name="g", op="Greater", input=["r:value:0", "x"])
        iff = fd.node_def.add(name="if", op="If", input=["g:z:0", "x"])
        iff.attr["then_branch"].func.name = f"f{(i + 1) % n}" if i % 1000 else "f0"
        iff.attr["else_branch"].func.name = f"leaf{i % 10}"
        nxt = fd.node_def.add(name="c", op="PartitionedCall", input=["if:output:0", "h"])
        nxt.attr["f"].func.name = f"f{min(i + 1, n - 1)}"
        fd.ret["y"] = "c:output:0"
    for j in range(10):
        fd = gd.library.function.add()
        fd.signature.name = f"leaf{j}"
        fd.signature.input_arg.add(name="x", type=1)
        fd.signature.output_arg.add(name="y", type=1)
        fd.node_def.add(name="n", op="Neg", input=["x"])
        fd.ret["y"] = "n:y:0"
    sig = mg.signature_def["serving_default"]
    sig.inputs["x"].name = "x:0"
    sig.outputs["y"].name = "call:0"
    path.mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_bytes(sm.SerializeToString())


def time_scan(path: Path, include_dataflow: bool, reps: int) -> float:
    classes = [c for c in rule_classes() if include_dataflow or not ({m.id for m in c.all_meta()} & DATAFLOW_RULES)]
    cand = Candidate(str(path), ArtifactFormat.SAVEDMODEL, path.name)
    times = []
    for _ in range(reps):
        with paused_gc():  # as modelwarden.scanner.scan does
            t = time.perf_counter()
            artifact = read_artifact(cand)
            ctx = AnalysisContext(artifact, load_catalog(), Policy(), ScanOptions())
            for cls in classes:
                rule = cls()
                if rule.applies_to(ctx):
                    list(rule.check(ctx))
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 3 if args.quick else 9
    WORK.mkdir(exist_ok=True)
    models = {"mobilenetv2": WORK / "mobilenetv2_savedmodel", "library-10k": WORK / "library10k_savedmodel"}
    if not (models["mobilenetv2"] / "saved_model.pb").exists():
        build_mobilenet(models["mobilenetv2"])
    build_big_library(models["library-10k"])
    print(f"{'model':<14} {'without dataflow':>17} {'with dataflow':>14} {'ratio':>7}  target <= 2.0")
    worst = 0.0
    for name, path in models.items():
        base, full = [], []
        for _ in range(2):  # interleave to share the machine's noise
            base.append(time_scan(path, False, reps))
            full.append(time_scan(path, True, reps))
        b, f = min(base), min(full)
        ratio = f / b
        worst = max(worst, ratio)
        print(f"{name:<14} {b * 1000:>14.1f} ms {f * 1000:>11.1f} ms {ratio:>7.2f}  {'PASS' if ratio <= 2 else 'FAIL'}")
    sys.exit(0 if worst <= 2 else 1)


if __name__ == "__main__":
    main()
