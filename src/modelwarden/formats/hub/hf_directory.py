"""Hugging Face model directories: what ``from_pretrained`` would run and read.

A directory is a Hugging Face model when its ``config.json`` looks like a transformers
config (``model_type``, ``architectures``, ``auto_map`` ...) or it has a
``tokenizer_config.json``.  The reader records, without importing transformers:

* remote code: every ``auto_map`` entry (config, tokenizer, processor configs) and
  ``custom_pipelines`` entry names ``module.Class``; with ``trust_remote_code=True``
  transformers imports ``module.py`` from the repository together with its relative
  imports (``from .x import``) — each becomes a :class:`PythonSource` parsed with ``ast``;
  ``repo--module.Class`` fetches the code from another repository;
* chat templates: ``chat_template`` in ``tokenizer_config.json`` / ``chat_template.json``
  (a string or a list of named templates) and ``chat_template.jinja`` files;
* the weights a PyTorch loader picks: safetensors (single or an index's shards) before
  ``pytorch_model.bin`` (a pickle), and pickles that are present but ignored, or loaded
  only when training resumes (``training_args.bin``, ``optimizer.pt``, ``rng_state*.pth``).

The weight files themselves are separate artifacts (the pickle and safetensors readers
scan them); this reader reports the load plan.
"""

from __future__ import annotations

import os
import posixpath

from modelwarden.errors import InputError
from modelwarden.formats import safeio
from modelwarden.formats.safeio import inside
from modelwarden.formats.hub.pysource import SourceBudget
from modelwarden.formats.hub.templates import template_facts, templates_in
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.ir import Artifact, ArtifactFormat, LoadStep, PythonSource, TemplateFacts

CONFIG_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                "feature_extractor_config.json", "image_processor_config.json", "video_preprocessor_config.json")
HF_CONFIG_KEYS = frozenset({"model_type", "architectures", "auto_map", "transformers_version", "_name_or_path",
                            "custom_pipelines"})
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
OTHER_FRAMEWORKS = ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
RESUME_PICKLES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")
MAX_MODULES = 200
MAX_SOURCE = 4 * 1024 * 1024


def _json(path: str, limits: Limits) -> object:
    return safeio.load_json(safeio.read_file(path, limits.max_json_bytes), path, max_bytes=limits.max_json_bytes,
                            max_depth=limits.max_json_depth)


def is_hf_directory(d: str, names: set[str], limits: Limits = DEFAULT_LIMITS) -> bool:
    """Does directory ``d`` (whose entries are ``names``) look like a Hugging Face model?"""
    if "tokenizer_config.json" in names:
        return True
    if "config.json" not in names:
        return False
    try:
        cfg = _json(os.path.join(d, "config.json"), limits)
    except InputError:
        return False
    return isinstance(cfg, dict) and bool(HF_CONFIG_KEYS & cfg.keys())


def _references(cfg: dict, where: str) -> list[tuple[str, str]]:
    """``(entry, "module.Class")`` from auto_map and custom_pipelines."""
    out: list[tuple[str, str]] = []
    auto = cfg.get("auto_map")
    if isinstance(auto, dict):
        for key, value in list(auto.items())[:MAX_MODULES]:
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str):
                    out.append((f"{where} auto_map {key}", v))
    pipes = cfg.get("custom_pipelines")
    if isinstance(pipes, dict):
        for task, spec in list(pipes.items())[:MAX_MODULES]:
            impl = spec.get("impl") if isinstance(spec, dict) else None
            if isinstance(impl, str):
                out.append((f"{where} custom_pipelines {task}", impl))
    return out


class HfDirectoryReader(Reader):
    format = ArtifactFormat.HF_MODEL

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        root = candidate.path
        try:
            names = set(os.listdir(root))
        except OSError as exc:
            raise InputError(root, f"cannot list directory: {exc.strerror}") from None
        configs: dict[str, dict] = {}
        for name in CONFIG_FILES:
            if name in names and os.path.isfile(os.path.join(root, name)) \
                    and not os.path.islink(os.path.join(root, name)):
                cfg = _json(os.path.join(root, name), limits)
                if not isinstance(cfg, dict):
                    raise InputError(os.path.join(root, name), "not a JSON object")
                configs[name] = cfg
        plan: list[LoadStep] = []
        python: list[PythonSource] = []
        self._remote_code(root, names, configs, plan, python)
        plan += weight_plan(root, names, limits)
        templates = self._templates(root, names, configs, candidate.display, limits)
        plan += [LoadStep("render-template", t.source, t.name) for t in templates]
        meta = {"weights": ", ".join(s.target for s in plan if s.action in ("read-weights", "unpickle"))[:500] or "none",
                "remote_code": str(sum(1 for s in plan if s.action == "run-remote-code"))}
        model_type = configs.get("config.json", {}).get("model_type")
        if isinstance(model_type, str):
            meta["model_type"] = model_type[:100]
        return Artifact(path=root, display=candidate.display, format=ArtifactFormat.HF_MODEL, python=tuple(python),
                        templates=tuple(templates), load_plan=tuple(plan), metadata=meta,
                        files=safeio.walk_tree(root, limits.max_dir_entries))  # links leaving it: MW201-MW203

    def _remote_code(self, root: str, names: set[str], configs: dict[str, dict], plan: list[LoadStep],
                     python: list[PythonSource]) -> None:
        analysed: set[str] = set()
        budget = SourceBudget()
        for cfg_name, cfg in configs.items():
            for entry, ref in _references(cfg, cfg_name):
                repo, sep, local = ref.rpartition("--")
                module, _, cls = local.rpartition(".")
                if sep:
                    plan.append(LoadStep("run-remote-code", ref, f"{entry}: code from repository {repo}", False))
                    continue
                file = f"{module}.py"
                present = bool(module) and "/" not in module and file in names \
                    and os.path.isfile(os.path.join(root, file))
                plan.append(LoadStep("run-remote-code", file, f"{entry} -> {local}", present))
                if present:
                    self._analyse(root, names, file, f"{entry} -> {local}", analysed, python, budget)

    def _analyse(self, root: str, names: set[str], file: str, entry: str, analysed: set[str],
                 python: list[PythonSource], budget: SourceBudget) -> None:
        """Analyse ``file`` and the relative imports transformers copies with it."""
        todo = [file]
        while todo and len(analysed) < MAX_MODULES:
            f = todo.pop()
            if f in analysed:
                continue
            analysed.add(f)
            path = os.path.join(root, f)
            try:
                data = safeio.read_file(path, MAX_SOURCE + 1, what="Python module")
            except InputError as exc:
                python.append(PythonSource(f, "hf remote code", entry=entry, error=exc.reason))
                continue
            src = budget.parse(data, f, "hf remote code", entry if f == file else f"imported by {entry}")
            python.append(src)
            for imp in src.imports:
                if imp.name.startswith("."):
                    mod = imp.name.lstrip(".").split(".")[0]
                    if f"{mod}.py" in names:
                        todo.append(f"{mod}.py")

    def _templates(self, root: str, names: set[str], configs: dict[str, dict], display: str,
                   limits: Limits) -> list[TemplateFacts]:
        found: list[tuple[str, str, str]] = []
        for cfg_name in ("tokenizer_config.json", "processor_config.json"):
            value = configs.get(cfg_name, {}).get("chat_template")
            found += [(cfg_name, n, t) for n, t in templates_in(value, cfg_name)]
        if "chat_template.json" in names:
            value = _json(os.path.join(root, "chat_template.json"), limits)
            if isinstance(value, dict):
                found += [("chat_template.json", n, t) for n, t in templates_in(value.get("chat_template"),
                                                                                  "chat_template.json")]
        jinja = ["chat_template.jinja"] if "chat_template.jinja" in names else []
        extra_dir = os.path.join(root, "additional_chat_templates")
        if os.path.isdir(extra_dir) and not os.path.islink(extra_dir):
            jinja += [posixpath.join("additional_chat_templates", n) for n in sorted(os.listdir(extra_dir))[:100]
                      if n.endswith(".jinja")]
        for rel in jinja:
            text = safeio.read_file(os.path.join(root, rel), limits.max_json_bytes, what="chat template")
            name = "default" if rel == "chat_template.jinja" else posixpath.basename(rel)[: -len(".jinja")]
            found.append((rel, name, text.decode("utf-8", "replace")))
        return [template_facts(text, src, name) for src, name, text in found]


def weight_plan(root: str, names: set[str], limits: Limits = DEFAULT_LIMITS) -> list[LoadStep]:
    """Which weight files a PyTorch ``from_pretrained`` reads, in transformers' order of preference."""
    plan: list[LoadStep] = []
    chosen = next((n for n in SAFETENSORS if n in names), None)
    kind = "read-weights"
    if chosen is None:
        chosen = next((n for n in PICKLED_WEIGHTS if n in names), None)
        kind = "unpickle"
    if chosen is not None:
        shards = _shards(root, chosen, limits) if chosen.endswith(".index.json") else [chosen]
        for shard in shards:
            plan.append(LoadStep(kind, shard, "safetensors: tensors only, no code" if kind == "read-weights" else
                                 "pickle: torch.load (weights_only=True in torch>=2.6, full unpickling before)",
                                 inside(shard) and shard in names))
        if kind == "read-weights":
            plan += [LoadStep("ignored", n, "pickled weights beside safetensors: loaded only with "
                              "use_safetensors=False or by older loaders") for n in PICKLED_WEIGHTS if n in names]
    plan += [LoadStep("other-framework", n, "read only with from_tf/from_flax") for n in OTHER_FRAMEWORKS
             if n in names]
    plan += [LoadStep("unpickle-on-resume", n, "torch.load when training resumes from this checkpoint")
             for n in sorted(names) if n in RESUME_PICKLES or (n.startswith("rng_state") and n.endswith(".pth"))]
    return plan


def _shards(root: str, index_name: str, limits: Limits) -> list[str]:
    index = _json(os.path.join(root, index_name), limits)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise InputError(os.path.join(root, index_name), "weight index has no weight_map object")
    return sorted({v for v in weight_map.values() if isinstance(v, str)})[:10_000]


