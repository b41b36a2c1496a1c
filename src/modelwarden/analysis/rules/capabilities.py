"""MW100–MW107: ops that can run code, touch files, the network or debug sinks.

The catalog (data) says what an op can do; this pass decides whether a node
does it (attribute conditions, where its path comes from) and how it is
reached.  A SavedModel's own save/restore machinery is not a finding; the same
ops reachable from a signature, or fed a constant path, are.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.callgraph import tensor_node
from modelwarden.analysis.graphs import GraphView, graph_views, node_location
from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.analysis.values import Value
from modelwarden.catalog import OpSpec
from modelwarden.ir import EntryKind, Function, Node

GRAPH_FORMATS = ("tf-savedmodel", "tf-graphdef", "tflite")
SAVER_MACHINERY = frozenset({"SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore", "RestoreSlice", "MergeV2Checkpoints"})
LOCAL_SCHEMES = ("", "file")


def _meta(id_: str, name: str, sev: Severity, summary: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description=summary, remediation=remediation, formats=GRAPH_FORMATS, tags=("capability",))


CAPABILITY_META = {
    "code-execution": _meta(
        "MW100", "code-execution-op", Severity.CRITICAL,
        "An op runs arbitrary Python code registered in the loading process (PyFunc, EagerPyFunc).",
        "Do not load this model outside a sandbox; ask the author for a version without py_function/numpy_function.",
    ),
    "file-read": _meta(
        "MW101", "file-read-op", Severity.HIGH,
        "An op reads host files (ReadFile, MatchingFiles, readers, file datasets, lookup tables from files, Restore*).",
        "Check the path evidence; run the model only in the sandbox, or remove the op. Lookup tables should use the model's own assets.",
    ),
    "file-write": _meta(
        "MW102", "file-write-op", Severity.HIGH,
        "An op writes, creates or deletes host files (WriteFile, Save*, MergeV2Checkpoints, dataset writers, summary writers).",
        "Models should not write files at inference time: reject the model or run it only in the sandbox.",
    ),
    "network": _meta(
        "MW103", "network-op", Severity.CRITICAL,
        "An op talks to other machines or processes (tf.data service, RPC, Send/Recv, RemoteCall, collectives).",
        "Inference graphs should not communicate: reject the model, or run it in the sandbox without network.",
    ),
    "debug-sink": _meta(
        "MW104", "debug-sink-op", Severity.MEDIUM,
        "An op sends tensor values to a file or debug endpoint (PrintV2 to file://, Debug* ops with debug_urls).",
        "Remove the debug op or point it at stderr; tensors (possibly request data) would leave the process.",
    ),
    "memory-map": _meta(
        "MW105", "memory-map-op", Severity.HIGH,
        "ImmutableConst memory-maps a host file named by an attribute.",
        "Reject the model unless the mapped file is the model's own and you trust it.",
    ),
    "graph-execution": _meta(
        "MW108", "embedded-graph-op", Severity.HIGH,
        "An op runs a serialized GraphDef given as a string (DatasetFromGraph) that is not a constant: "
        "the graph it runs is chosen at run time and cannot be scanned. Constant ones are parsed and "
        "their nodes analysed like the model's own.",
        "Reject the model, or run it only in the sandbox.",
    ),
}
REMOTE_META = _meta(
    "MW107", "remote-url-path", Severity.CRITICAL,
    "A file op is given a URL (gs://, s3://, http://, hdfs://): TensorFlow's filesystems fetch or send data over the network.",
    "Reject the model: inference should not read or write remote storage.",
)


def _path_values(view: GraphView, fn: Function, node: Node, spec: OpSpec) -> list[Value]:
    values = [view.values.input_of(fn, node, i) for i in spec.paths]
    for attr in spec.path_attrs:
        raw = node.attrs.get(attr)
        if isinstance(raw, tuple):
            values.append(Value("const", tuple(str(v) for v in raw)))
        elif raw not in (None, ""):
            values.append(Value("const", (str(raw),)))
    return values


def _saver_paths(view: GraphView, fn: Function, node: Node, spec: OpSpec) -> bool:
    """Every path input of a save/restore op is the saver's filename in a shape TensorFlow emits."""
    data = node.data_inputs
    parent = view.cg.reach(fn, node).parent
    return bool(spec.paths) and all(
        i < len(data) and view.values.is_saver_path(fn, data[i], parent) for i in spec.paths)


def _in_restore_path(ctx: AnalysisContext, view: GraphView, fn: Function, node: Node) -> bool:
    """Does the saver's restore op (run by every load) reach this node?  TensorFlow's restore
    path only reads; a write there runs at load time."""
    key = f"restore-region:{id(view)}"
    region = ctx.cache.get(key)
    if region is None:
        region = ctx.cache[key] = _restore_region(view)
    main_nodes, functions = region
    return node.name in main_nodes if fn is view.graph.main else fn.name in functions


def _restore_region(view: GraphView) -> tuple[frozenset[str], frozenset[str]]:
    """Top-level nodes and functions the saver's restore op depends on or calls."""
    saver = view.graph.saver
    index = {n.name: n for n in view.graph.main.nodes}
    if saver is None or not saver.restore_op or tensor_node(saver.restore_op) not in index:
        return frozenset(), frozenset()
    seen = {tensor_node(saver.restore_op)}
    queue = list(seen)
    called: list[str] = []
    while queue:
        node = index[queue.pop()]
        for inp in node.inputs:
            name = tensor_node(inp)
            if name in index and name not in seen:
                seen.add(name)
                queue.append(name)
        called.extend(ref.name for _, ref in node.func_refs())
        if node.op in view.graph.functions:
            called.append(node.op)
    functions: set[str] = set()
    while called:
        name = called.pop()
        if name in functions or name not in view.graph.functions:
            continue
        functions.add(name)
        called.extend(edge.callee for edge in view.cg.edges.get(name, ()))
    return frozenset(seen), frozenset(functions)


def _scheme(path: str) -> str:
    if "://" not in path:
        return ""
    from urllib.parse import urlsplit  # only for a URL-like path: the module costs each process ~2 ms to import

    try:
        return urlsplit(path).scheme.lower()
    except ValueError:
        return ""


@register
class CapabilityRule(Rule):
    metas = (*CAPABILITY_META.values(), REMOTE_META)
    meta = CAPABILITY_META["file-read"]

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        from modelwarden.analysis.gating import watched_nodes  # it imports this module

        for view in graph_views(ctx):
            for fn, node, _, active in watched_nodes(ctx, view):  # the nodes the catalog names
                if active:
                    caps = [c for c in active if c in CAPABILITY_META]
                    if caps:
                        yield from self._node(ctx, view, fn, node, caps)

    def _node(self, ctx: AnalysisContext, view: GraphView, fn: Function, node: Node, caps: list[str]) -> Iterable[Finding]:
        spec = ctx.catalog.lookup(node.op)
        assert spec is not None
        reach = view.cg.reach(fn, node)
        kinds = view.cg.kinds(fn, node)
        if spec.graph_inputs and all(view.values.input_of(fn, node, i).kind == "const" for i in spec.graph_inputs):
            caps = [c for c in caps if c != "graph-execution"]  # the reader parsed it: analysed as a graph
            if not caps:
                return
        # the saver's own machinery first: it is exempt whatever its path values, so they are not resolved
        saver_only = bool(kinds) and kinds <= {EntryKind.SAVER}
        at_load = "file-write" in caps and _in_restore_path(ctx, view, fn, node)
        if saver_only and node.op in SAVER_MACHINERY and not at_load and _saver_paths(view, fn, node, spec):
            return  # the model's own checkpoint save/restore, on exactly the paths TensorFlow derives
        values = _path_values(view, fn, node, spec)
        consts = [v for val in values if val.kind == "const" for v in val.values]
        if spec.empty_path_ok and values and all(val.kind == "const" for val in values) and not any(consts):
            return
        asset_fed = bool(values) and all(v.kind == "asset" for v in values)
        location = node_location(ctx, view, fn, node, reach)
        evidence = {"op": node.op}
        if values:
            evidence["path"] = "; ".join(v.describe() for v in values)
        if node.attrs.get("_tflite_flex"):
            evidence["tflite"] = "Flex op (runs a TensorFlow kernel)"
        for cap in caps:
            meta = CAPABILITY_META[cap]
            severity = ctx.catalog.severity_of(spec, cap)
            if cap == "file-read" and asset_fed:
                severity = Severity.INFO  # reads the model's own asset file
            elif reach.kind is None:
                severity = severity.lowered(1, floor=Severity.LOW)
            where = "not reachable from any signature" if reach.kind is None else f"reached via {reach.label}"
            if at_load:
                where += " (in the saver's restore path: it runs when the model is loaded)"
            what = f" {evidence['path']}" if "path" in evidence else ""
            note = f" ({spec.note})" if spec.note else ""
            msg = f"{node.op}{what}: {ctx.catalog.kinds[cap].summary}{note}; {where}"
            yield ctx.finding(meta, msg, location, severity=severity, capability=cap, evidence=evidence)
        for path in consts:
            scheme = _scheme(path)
            if scheme not in LOCAL_SCHEMES:
                msg = f"{node.op} is given the URL {path!r}: TensorFlow's {scheme}:// filesystem reaches the network"
                yield ctx.finding(REMOTE_META, msg, location, capability="network", evidence={"op": node.op, "url": path})
