"""SavedModel directories: saved_model.pb / .pbtxt, object graph, assets, variables, metadata.

Everything a loader may execute becomes an :class:`~modelwarden.ir.EntryPoint`:
serving signatures, the init op and TF1 main/legacy-init ops and TF2 resource
initialisers (load time), the saver (restore runs at load in C++ loaders such
as TensorFlow Serving), and every function the object graph exposes.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Container, Sequence
from typing import Any

from modelwarden.errors import InputError
from modelwarden.formats import safeio, tfproto
from modelwarden.formats.funcattrs import Calls, nodes_with_func_attrs
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.tfgraph import embedded_graphs, graph_body, may_embed_graphs, shape_dims
from modelwarden.ir import (
    Artifact,
    ArtifactFormat,
    AssetRef,
    Capture,
    Checkpoint,
    EntryKind,
    EntryPoint,
    FileKind,
    Graph,
    KerasModel,
    SaverInfo,
    Signature,
    TensorSpec,
    VariableSpec,
)

INIT_SIGNATURE = "__saved_model_init_op"
# TF1 collections whose ops the loader runs after restoring variables.
LOAD_TIME_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "main_op", "table_initializer")
# SavedObject children that the TF2 loader calls while loading a resource.
RESOURCE_LOAD_FUNCTIONS = ("_create_resource", "_initialize")

MAX_ASSETS = 100_000


GRAPH_FILE_NAMES = ("saved_model.pb", "saved_model.pbtxt")


def find_model_files(directory: str, listed: "Container[str] | None" = None) -> list[str]:
    """The graph files TensorFlow would consider in a SavedModel directory (.pb first);
    ``listed``: the names of the directory's entries, when already known (no stat each)."""
    return [
        os.path.join(directory, name)
        for name in GRAPH_FILE_NAMES
        if (name in listed if listed is not None else os.path.lexists(os.path.join(directory, name)))
    ]


SAVEDMODEL_TEXT_KEYS = (b"saved_model_schema_version", b"meta_graphs")


def is_text_saved_model(path: str, head: bytes) -> bool:
    """Text or binary, decided once for detection and reading: by name where TensorFlow's loader
    decides by name (``saved_model.pbtxt``/``saved_model.pb``), by content for any other file."""
    from modelwarden.formats.graphdef import text_key

    base = os.path.basename(path)
    if base in ("saved_model.pb", "saved_model.pbtxt"):
        return base.endswith(".pbtxt")
    return b"\x00" not in head[:256] and text_key(head) in SAVEDMODEL_TEXT_KEYS


def load_saved_model_proto(path: str, limits: Limits) -> tuple[Any, Calls | None]:
    """The SavedModel message, and which of its nodes may name a function in an attribute when
    that is cheap to tell (binary and small: :mod:`funcattrs`)."""
    data = safeio.read_file(path, limits.max_proto_bytes, what="SavedModel graph")
    if is_text_saved_model(path, data[:4096]):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(path, "SavedModel text file is not valid UTF-8") from None
        return tfproto.parse_text("SavedModel", text, path), None
    sm = tfproto.parse("SavedModel", data, path)
    return sm, nodes_with_func_attrs("SavedModel", data)


def _sorted_items(proto_map: Any) -> list[tuple[str, Any]]:
    """A protobuf map's items by key (its items() is the slow Mapping mixin: keys, then lookups)."""
    return [(k, proto_map[k]) for k in sorted(proto_map)]


def _signature(name: str, sdef: Any) -> Signature:
    def specs(m: Any) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(key, info.name, tfproto.dtype_name(info.dtype), shape_dims(info.tensor_shape))
            for key, info in _sorted_items(m)
        )

    return Signature(name, sdef.method_name, specs(sdef.inputs), specs(sdef.outputs))


VARIABLE_KEY_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _escape_local_name(name: str) -> str:
    """TensorFlow's escaping of object names in checkpoint keys."""
    return name.replace(".", "..").replace("/", ".S")


def _object_paths(nodes: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Per object-graph node: a human path ("root.layer.call") and its checkpoint key prefix, breadth first."""
    n = len(nodes)
    paths = [""] * n
    keys = [""] * n
    if not n:
        return paths, keys
    paths[0] = "root"
    queue = deque([0])
    while queue:
        i = queue.popleft()
        for child in nodes[i].children:
            j = child.node_id
            if 0 <= j < n and not paths[j]:
                name = child.local_name
                paths[j] = f"{paths[i]}.{name}"
                esc = _escape_local_name(name)
                keys[j] = f"{keys[i]}/{esc}" if keys[i] else esc
                queue.append(j)
    return [p or f"node[{i}]" for i, p in enumerate(paths)], keys


def _object_graph_entries(
    mg: Any, fn_names: set[str]
) -> tuple[list[EntryPoint], dict[str, tuple[Capture, ...]], list[VariableSpec]]:
    og = mg.object_graph_def
    entries: list[EntryPoint] = []
    captures: dict[str, tuple[Capture, ...]] = {}
    nodes = og.nodes[:]  # one wrapper per node, and each node's kind asked once
    if not nodes:
        return entries, captures, []
    kinds = [obj.WhichOneof("kind") for obj in nodes]
    paths, keys = _object_paths(nodes)
    variables = [
        VariableSpec(
            keys[i] + VARIABLE_KEY_SUFFIX,
            tfproto.dtype_name(obj.variable.dtype),
            shape_dims(obj.variable.shape),
            paths[i],
        )
        for i, obj in enumerate(nodes)
        if kinds[i] == "variable" and keys[i]
    ]
    n = len(nodes)

    def concrete(i: int) -> tuple[str, ...]:
        kind = kinds[i]
        if kind == "function":
            return tuple(nodes[i].function.concrete_functions)
        if kind == "bare_concrete_function":
            return (nodes[i].bare_concrete_function.concrete_function_name,)
        return ()

    load_time: list[str] = []
    for i, obj in enumerate(nodes):
        names = concrete(i)
        if names:
            entries.append(EntryPoint(EntryKind.OBJECT_METHOD, paths[i], functions=names))
        if kinds[i] == "resource":
            for child in obj.children:
                if child.local_name in RESOURCE_LOAD_FUNCTIONS and 0 <= child.node_id < n:
                    load_time.extend(concrete(child.node_id))
        saveables = obj.saveable_objects
        for key in saveables if len(saveables) else ():  # keys, then lookups: values() is the slow Mapping mixin
            so = saveables[key]
            for fid in (so.save_function, so.restore_function):
                if 0 < fid < n:
                    entries.append(EntryPoint(EntryKind.SAVER, paths[fid], functions=concrete(fid)))
    if load_time:
        entries.append(EntryPoint(EntryKind.LOAD_TIME, "resource-initializers", functions=tuple(load_time)))

    asset_files = list(mg.asset_file_def)
    cfs = og.concrete_functions
    for fname in cfs:
        caps: list[Capture] = []
        for node_id in cfs[fname].bound_inputs:
            if not 0 <= node_id < n:
                caps.append(Capture("other"))
                continue
            obj = nodes[node_id]
            kind = kinds[node_id]
            if kind == "asset":
                idx = obj.asset.asset_file_def_index
                fn = asset_files[idx].filename if 0 <= idx < len(asset_files) else ""
                caps.append(Capture("asset", fn))
            elif kind == "constant":
                caps.append(Capture("constant", obj.constant.operation))
            elif kind == "variable":
                caps.append(Capture("variable", keys[node_id] + VARIABLE_KEY_SUFFIX if keys[node_id] else paths[node_id]))
            else:
                caps.append(Capture("other", paths[node_id]))
        if caps and fname in fn_names:
            captures[fname] = tuple(caps)
    return entries, captures, variables


def _asset_file_defs(mg, path: str) -> list:
    """The loader's assets: ``asset_file_def``, or else (TF1 builders) the ``saved_model_assets``
    collection of ``Any``-packed AssetFileDefs, exactly as ``loader_impl.get_asset_tensors`` reads them."""
    if mg.asset_file_def:
        return list(mg.asset_file_def)
    coll = mg.collection_def.get("saved_model_assets") if "saved_model_assets" in mg.collection_def else None
    if coll is None or coll.WhichOneof("kind") != "any_list":
        return []
    out = []
    for item in coll.any_list.value[:MAX_ASSETS]:
        if item.type_url.rsplit("/", 1)[-1] == "tensorflow.AssetFileDef":
            out.append(tfproto.parse("AssetFileDef", item.value, path))
    return out


def _tf1_variables(nodes: Any) -> list[VariableSpec]:
    out = []
    for n in nodes:
        if n.op in ("VariableV2", "Variable", "VarHandleOp"):
            dt = n.attrs.get("dtype")
            shape = n.attrs.get("shape")
            out.append(VariableSpec(
                str(n.attrs.get("shared_name") or n.name), str(dt or ""), getattr(shape, "dims", None), n.name
            ))
    return out


def meta_graph_to_ir(mg: Any, index: int, source_file: str, path: str, limits: Limits,
                     calls: Calls | None = None) -> Graph:
    """One MetaGraphDef -> Graph with every way into it as an entry point; ``calls``: the nodes of
    the SavedModel that may name functions, when known (:func:`load_saved_model_proto`)."""
    tags = tuple(mg.meta_info_def.tags)
    name = f"meta_graph[{index}]" + (f"({','.join(tags)})" if tags else "")
    main, functions = graph_body(mg.graph_def, "<graph>", path, limits, None if calls is None else calls.get(index, {}))
    entries: list[EntryPoint] = []
    signatures: list[Signature] = []
    for key in sorted(mg.signature_def):
        sdef = mg.signature_def[key]
        outputs = tuple(info.name for _, info in _sorted_items(sdef.outputs))
        if key == INIT_SIGNATURE:
            entries.append(EntryPoint(EntryKind.LOAD_TIME, "init-op", tensors=outputs))
            continue
        signatures.append(_signature(key, sdef))
        entries.append(EntryPoint(EntryKind.SIGNATURE, key, tensors=outputs))
    for coll in LOAD_TIME_COLLECTIONS:
        if coll in mg.collection_def and mg.collection_def[coll].WhichOneof("kind") == "node_list":
            roots = tuple(mg.collection_def[coll].node_list.value)
            entries.append(EntryPoint(EntryKind.LOAD_TIME, coll, tensors=roots))
    saver = None
    if mg.HasField("saver_def"):
        sd = mg.saver_def
        saver = SaverInfo(sd.filename_tensor_name, sd.save_tensor_name, sd.restore_op_name)
        roots = tuple(t for t in (sd.save_tensor_name, sd.restore_op_name) if t)
        if roots:
            entries.append(EntryPoint(EntryKind.SAVER, "saver", tensors=roots))
    og_entries, captures, variables = _object_graph_entries(mg, set(functions))
    entries.extend(og_entries)
    if not mg.object_graph_def.nodes:  # TF1: variables are nodes named by their checkpoint key
        variables = _tf1_variables(main.nodes)
    assets = tuple(AssetRef(a.filename, a.tensor_info.name) for a in _asset_file_defs(mg, path))
    producer = mg.graph_def.versions.producer if mg.graph_def.HasField("versions") else None
    return Graph(
        name=name,
        main=main,
        functions=functions,
        entry_points=tuple(entries),
        signatures=tuple(signatures),
        assets=assets,
        saver=saver,
        captures=captures,
        variables=tuple(variables),
        tags=tags,
        producer=producer,
        tf_version=mg.meta_info_def.tensorflow_version,
        source_file=source_file,
    )


class SavedModelReader(Reader):
    format = ArtifactFormat.SAVEDMODEL

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        root = candidate.path
        standalone = os.path.isfile(root)  # a SavedModel proto file outside its directory
        files = () if standalone else safeio.walk_tree(root, limits.max_dir_entries)
        listed = {f.relpath: f.kind for f in files}  # what the walk saw: the checks below need no stat
        graph_files = [root] if standalone else find_model_files(root, listed)
        if not graph_files:
            raise InputError(root, "no saved_model.pb or saved_model.pbtxt in this directory")
        graphs: list[Graph] = []
        metadata: dict[str, str] = {}
        for gf in graph_files:
            rel = os.path.basename(gf) if standalone else os.path.relpath(gf, root)
            sm, calls = load_saved_model_proto(gf, limits)
            if not sm.meta_graphs:
                raise InputError(gf, "SavedModel contains no meta graphs")
            metadata.setdefault("saved_model_schema_version", str(sm.saved_model_schema_version))
            for i, mg in enumerate(sm.meta_graphs):
                g = meta_graph_to_ir(mg, i, rel, gf, limits, calls)
                graphs.append(g)
                if may_embed_graphs(g.main, g.functions, mg.graph_def):
                    graphs.extend(embedded_graphs(mg.graph_def, g.name, gf, limits))
                if g.tf_version:
                    metadata.setdefault("tensorflow_version", g.tf_version)
                if g.producer is not None:
                    metadata.setdefault("producer", str(g.producer))
        if standalone:
            return Artifact(root, candidate.display, self.format, graphs=tuple(graphs), metadata=metadata)
        metadata.update(self._fingerprint(root, limits, listed))
        return Artifact(
            path=root,
            display=candidate.display,
            format=self.format,
            graphs=tuple(graphs),
            keras=self._keras_metadata(root, limits, listed),
            checkpoints=self._variables(root, candidate.display, limits, listed),
            files=files,
            metadata=metadata,
        )

    @staticmethod
    def _fingerprint(root: str, limits: Limits, listed: "Container[str] | None" = None) -> dict[str, str]:
        path = os.path.join(root, "fingerprint.pb")
        if not ("fingerprint.pb" in listed if listed is not None else os.path.lexists(path)):
            return {}
        fp = tfproto.parse("FingerprintDef", safeio.read_file(path, 1 << 20, what="fingerprint"), path)
        return {"fingerprint_checksum": str(fp.saved_model_checksum)}

    @staticmethod
    def _keras_metadata(root: str, limits: Limits, listed: "Container[str] | None" = None) -> KerasModel | None:
        path = os.path.join(root, "keras_metadata.pb")
        if not ("keras_metadata.pb" in listed if listed is not None else os.path.lexists(path)):
            return None
        from modelwarden.formats.keras_config import model_from_keras_metadata

        msg = tfproto.parse("KerasSavedMetadata", safeio.read_file(path, limits.max_json_bytes, what="keras metadata"), path)
        nodes = [(n.node_path, n.identifier, n.metadata) for n in msg.nodes]
        return model_from_keras_metadata(nodes, "keras_metadata.pb", limits)

    @staticmethod
    def _variables(root: str, display: str, limits: Limits,
                   kinds: "dict[str, FileKind] | None" = None) -> tuple[Checkpoint, ...]:
        """``kinds``: the walk's entries (relative path -> kind), when known: no stat each."""
        prefix = os.path.join(root, "variables", "variables")
        plain = kinds is not None and kinds.get("variables") is FileKind.DIR \
            and kinds.get("variables/variables.index") is FileKind.FILE  # neither a link: read it where it is
        if not plain:
            if not os.path.lexists(prefix + ".index"):
                return ()
            if os.path.islink(prefix + ".index") or os.path.islink(os.path.dirname(prefix)):
                # a link is the model's files' fact (MW201 when it leaves the model), not an
                # unreadable input: follow it only when it stays inside the model
                real = os.path.realpath(prefix + ".index")
                inside = real.startswith(os.path.realpath(root) + os.sep) and os.path.isfile(real)
                if not inside:
                    return ()
                prefix = real.removesuffix(".index")
        from modelwarden.formats.checkpoint import read_checkpoint

        return (read_checkpoint(prefix, f"{display}/variables/variables", limits),)
