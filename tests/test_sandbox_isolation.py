"""The sandbox really isolates: real namespaces, real worker processes, real TensorFlow inside.

One warm sandbox per backend is shared by the module (a cold start costs seconds).  What the
worker can see is read by the worker from the kernel (/proc/self/status, /proc/self/mounts,
socket(), getrlimit) through the ``introspect`` request.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from modelwarden.errors import UsageError
from modelwarden.sandbox import InvalidInput, Sandbox, SandboxLimits, WorkerCrashed, template
from modelwarden.sandbox.bwrap import BwrapBackend
from modelwarden.sandbox.namespaces import probe_namespaces

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]
from tests.attacker import spawn_mode, spawn_mode_all  # noqa: E402,F401 - fixtures
pytestmark = [*pytestmark, pytest.mark.usefixtures("spawn_mode")]  # workers booted fresh and forked from the template

LIMITS = SandboxLimits(memory_bytes=3 << 30, timeout_s=30, max_open_files=200, max_file_bytes=8 << 20,
                       tmpfs_bytes=16 << 20, max_processes=200)
ALLOWED_ROOT = {"dev", "etc", "lib", "lib64", "lib32", "model", "opt", "proc", "tmp", "usr"}


def leftovers() -> list[str]:
    """Children of this process that still exist, and worker cgroups not removed."""
    found = []
    me = os.getpid()
    templates = template.running_pids()  # a warm worker template stays; a boot process it forked must not
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) in (me, *templates) and int(stat.split("/")[2]) not in templates:
            found.append(f"child {stat.split('/')[2]} state {fields[0]}")
    found += glob.glob(f"/sys/fs/cgroup/*/**/modelwarden-{me}-*", recursive=True)
    found += glob.glob(f"/sys/fs/cgroup/modelwarden-{me}-*")
    return found


def _backends():
    out = ["namespaces"]
    ok, why = BwrapBackend.availability()
    out.append(pytest.param("bwrap", marks=pytest.mark.skipif(not ok, reason=why)))
    return out


@pytest.fixture(scope="module")
def models(fixture_dir):
    d = fixture_dir("build_run_models")
    return d, json.loads((d / "expected.json").read_text())


@pytest.fixture(scope="module", params=_backends())
def warm(request, models, spawn_mode_all):
    if spawn_mode_all == "template" and request.param != "namespaces":
        pytest.skip("only the namespaces backend forks workers from a template")
    d, expected = models
    sb = Sandbox(LIMITS, backend=request.param)
    model = sb.load(d / "dense", scan=False)
    info = sb.introspect()
    yield request.param, sb, model, info, expected
    sb.close()
    assert leftovers() == []


def test_predict_matches_the_model(warm):
    _, _, model, _, expected = warm
    out = model.predict({"x": np.array(expected["x"], np.float32)})
    assert set(out) == {"y"}
    np.testing.assert_allclose(out["y"], expected["y"], rtol=1e-6)


def test_warm_worker_answers_repeated_calls(warm):
    _, sb, model, _, expected = warm
    x = np.array(expected["x"], np.float32)
    for _ in range(50):
        np.testing.assert_allclose(model.predict({"x": x}, signature="serving_default")["y"], expected["y"], rtol=1e-6)
    assert sb.alive


def test_signatures_are_reported(warm):
    _, _, model, _, _ = warm
    sig = model.signatures["serving_default"]
    assert sig.inputs["x"].dtype == "float32" and sig.inputs["x"].shape == (None, 4)
    assert sig.outputs["y"].shape == (None, 2)


def test_no_capabilities_no_new_privs_seccomp_filter(warm):
    _, _, _, info, _ = warm
    st = info["status"]
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[key], 16) == 0, (key, st[key])
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2" and int(st["Seccomp_filters"]) >= 1


def test_filesystem_view_is_minimal(warm):
    backend, _, _, info, _ = warm
    assert set(info["root"]) <= ALLOWED_ROOT, info["root"]
    assert "model" in info["root"]
    mounts = [ln.split() for ln in info["mounts"]]
    points = {m[1] for m in mounts}
    for forbidden in ("/home", "/root", "/work", os.path.dirname(os.path.dirname(__file__))):
        assert not any(p == forbidden or p.startswith(forbidden + "/") for p in points), forbidden
    for dev, point, fstype, opts, *_ in mounts:
        if point in ("/", "/model", "/usr/lib", "/opt/modelwarden/pkg/modelwarden") or point.startswith("/opt/modelwarden/py"):
            assert "ro" in opts.split(","), (point, opts)
    tmp = [m for m in mounts if m[1] == "/tmp"]
    assert tmp and tmp[0][2] == "tmpfs"
    assert f"size={LIMITS.tmpfs_bytes // 1024}k" in tmp[0][3]
    assert info["tmp"] in ([], [".keras"])  # private: nothing of the host's /tmp


def test_processes_and_fds(warm):
    backend, _, _, info, _ = warm
    assert set(info["proc_pids"]) <= {"1", "2"}  # only the sandbox's own processes are visible
    if backend == "namespaces":
        assert info["pid"] == 1 and info["ppid"] == 0
    fds = info["fds"]
    # stdio, the channel, the fast path's doorbell and region (the memfd Python's mmap keeps; sealed)
    # and listdir's own descriptor: every other inherited fd was closed
    assert {"0", "1", "2"} <= set(fds) and len(fds) <= 7, fds


def test_network_has_no_usable_interface_and_only_unix_sockets(warm):
    _, _, _, info, _ = warm
    assert info["net_interfaces"] == ["lo"]
    assert info["sockets"]["AF_UNIX"] == "allowed"
    for fam in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"):
        assert info["sockets"][fam].startswith("denied"), fam
    assert info["hostname"] == "sandbox"


def test_rlimits_in_force(warm):
    _, _, _, info, _ = warm
    rl = info["rlimits"]
    assert rl["nofile"] == [LIMITS.max_open_files] * 2
    assert rl["fsize"] == [LIMITS.max_file_bytes] * 2
    assert rl["core"] == [0, 0]
    assert rl["cpu"][0] == LIMITS.cpu_seconds
    layers = info["layers"]
    if "memory" in layers.get("cgroups", ""):
        assert rl["as"][0] == -1
    else:
        assert rl["as"][0] == LIMITS.memory_bytes + LIMITS.as_headroom()


@pytest.mark.parametrize("inputs, match", [
    ({"x": np.zeros((1, 4), np.float32), "extra": np.zeros(1, np.float32)}, "unknown input 'extra'"),
    ({}, "missing input"),
    ({"x": np.zeros((1, 4), np.float64)}, "dtype float64"),
    ({"x": np.zeros((1, 5), np.float32)}, r"shape \[1, 5\]"),
    ({"x": np.zeros((4,), np.float32)}, r"shape \[4\]"),
])
def test_invalid_inputs_are_refused_and_the_worker_survives(warm, inputs, match):
    _, sb, model, _, expected = warm
    with pytest.raises(InvalidInput, match=match) as exc:
        model.predict(inputs)
    assert exc.value.exit_code == 15
    assert sb.alive
    model.predict({"x": np.array(expected["x"], np.float32)})


def test_unknown_signature(warm):
    _, _, model, _, _ = warm
    with pytest.raises(InvalidInput, match="no signature 'nope'"):
        model.predict({"x": np.zeros((1, 4), np.float32)}, signature="nope")


def test_one_model_per_sandbox(warm, models):
    _, sb, _, _, _ = warm
    with pytest.raises(UsageError, match="exactly one model"):
        sb.load(models[0] / "dense.keras", scan=False)


@pytest.mark.parametrize("name", ["dense.keras", "dense.tflite"])
def test_keras_and_tflite_run_inside(models, name):
    d, expected = models
    before = set(leftovers())  # a module-scoped warm sandbox may be alive
    with Sandbox(LIMITS) as sb:
        model = sb.load(d / name, scan=False)
        assert model.kind == ("keras" if name.endswith(".keras") else "tflite")
        sig = model.signature(None)
        (in_name,) = sig.inputs
        out = model.predict({in_name: np.array(expected["x"], np.float32)})
        (value,) = out.values()
        np.testing.assert_allclose(value, expected["y"], rtol=1e-5)
    assert set(leftovers()) <= before


def test_closed_sandbox_refuses_calls_and_leaves_nothing(models):
    d, expected = models
    before = set(leftovers())
    sb = Sandbox(LIMITS)
    model = sb.load(d / "dense", scan=False)
    sb.close()
    sb.close()  # idempotent
    assert not sb.alive
    with pytest.raises(WorkerCrashed):
        model.predict({"x": np.array(expected["x"], np.float32)})
    assert set(leftovers()) <= before


def test_model_under_host_tmp_is_visible_only_as_model(models, tmp_path):
    """The view is built over a private mount of /tmp: a model living in /tmp still works."""
    import shutil

    d, expected = models
    target = tmp_path / "m"
    shutil.copytree(d / "dense", target)
    (tmp_path / "neighbour-secret.txt").write_text("host secret")
    before = set(leftovers())
    with Sandbox(LIMITS) as sb:
        model = sb.load(target, scan=False)
        np.testing.assert_allclose(model.predict({"x": np.array(expected["x"], np.float32)})["y"], expected["y"], rtol=1e-6)
        info = sb.introspect()
    assert info["tmp"] in ([], [".keras"])
    assert set(leftovers()) <= before


def test_cpus_limit_pins_the_worker(models):
    d, _ = models
    with Sandbox(SandboxLimits(cpus=1)) as sb:
        sb.load(d / "dense", scan=False).predict({"x": np.ones((1, 4), np.float32)})
        info = sb.introspect()
        cpu_dir = sb._worker.cg.dirs.get("cpu")
        quota = open(os.path.join(cpu_dir, "cpu.cfs_quota_us")).read().strip() if cpu_dir else None
    assert len(info["cpus"]) == 1
    if quota is not None:
        assert quota == "100000"


def _host_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("Uid:")).split()[2])


@pytest.mark.skipif(os.geteuid() != 0, reason="the worker runs as the caller unless the caller is root")
@pytest.mark.parametrize("case", ["world-readable", "private-root-owned", "private-user-owned"])
def test_root_callers_worker_runs_as_an_unprivileged_host_user(models, tmp_path, case):
    """Whoever owns the model, a root caller's worker is host nobody (the model is copied in)."""
    import shutil

    d, expected = models
    target = tmp_path / "m"
    shutil.copytree(d / "dense", target)
    if case != "world-readable":
        for p in [target, *target.rglob("*")]:
            p.chmod(0o700 if p.is_dir() else 0o600)
    if case == "private-user-owned":
        for p in [target, *target.rglob("*")]:
            os.chown(p, 1234, 1234)
    with Sandbox(LIMITS) as sb:
        model = sb.load(target, scan=False)
        np.testing.assert_allclose(model.predict({"x": np.array(expected["x"], np.float32)})["y"], expected["y"], rtol=1e-6)
        info = sb.introspect()
        assert _host_uid(sb._worker.init_pid) == 65534  # seen from the host
    assert info["uid"] == 0 and info["uid_map"] == ["0", "65534", "1"]


@pytest.mark.parametrize("field, value", [
    ("memory_bytes", 0), ("timeout_s", -1), ("max_open_files", 3), ("cpus", 10_000), ("tmpfs_bytes", 1.5),
])
def test_limits_are_validated(field, value):
    with pytest.raises(UsageError):
        SandboxLimits(**{field: value})


def test_string_tensors_cross_the_boundary(fixture_dir):
    d = fixture_dir("build_serve_models")
    with Sandbox(LIMITS) as sb:
        model = sb.load(d / "strings" / "1")
        sig = model.signature(None)
        assert sig.inputs["text"].dtype == "string" and sig.outputs["upper"].dtype == "string"
        text = np.empty(4, dtype=object)
        text[:] = [b"abc", "h\u00e9".encode(), b"\xff\x00z", b""]
        out = model.predict({"text": text})
        assert out["upper"].dtype == object
        assert out["upper"].tolist() == [b"ABC", b"H\xc3\xa9", b"\xff\x00Z", b""]  # ASCII-only
        assert out["length"].tolist() == [3, 3, 3, 0] and out["echo_bytes"].tolist() == text.tolist()
        assert model.predict({"text": np.array(["x", "yz"])})["upper"].tolist() == [b"X", b"YZ"]  # str: UTF-8
        with pytest.raises(InvalidInput, match="dtype float32, signature 'serving_default' expects string"):
            model.predict({"text": np.zeros(2, np.float32)})
        with pytest.raises(InvalidInput, match="expects string"):
            model.predict({"text": np.zeros(2, np.int64)})
