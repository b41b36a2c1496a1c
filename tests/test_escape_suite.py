"""Escape suite: real malicious models (built by TensorFlow/Keras) run with the scan skipped.

Each attack is checked twice: a positive control proves the malicious op or code really
executed inside the worker, and the host side proves nothing of it reached the host.
"""

from __future__ import annotations

import errno
import glob as globmod
import os
import secrets
from pathlib import Path

import numpy as np
import pytest

from modelwarden.sandbox import ExecutionFailed, Sandbox, SandboxLimits
from modelwarden.sandbox.namespaces import probe_namespaces
from tests.conftest import ROOT
from tests.test_sandbox_isolation import leftovers

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]

HOST_FILES = [
    "/tmp/modelwarden-escape-printed.txt", "/tmp/modelwarden-escape-armed.txt", "/tmp/modelwarden-escape-lambda.txt",
    "/tmp/modelwarden-escape-lambda2.txt", "/tmp/modelwarden-escape-lambda-py.txt",
]
LIMITS = SandboxLimits(timeout_s=60, max_processes=128)


def b(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8)


@pytest.fixture(scope="module")
def escape(fixture_dir):
    return fixture_dir("build_escape")


@pytest.fixture(autouse=True)
def clean_host_files():
    for p in HOST_FILES:
        if os.path.exists(p):
            os.unlink(p)
    yield
    present = [p for p in HOST_FILES if os.path.exists(p)]
    for p in present:
        os.unlink(p)
    assert present == [], f"the model wrote to the host: {present}"


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    d = Path("/tmp") / f"modelwarden-escape-canary-{os.getpid()}"
    d.mkdir(exist_ok=True)
    secret = secrets.token_hex(16)
    (d / "secret.txt").write_text(secret)
    yield d / "secret.txt", secret
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fileops(escape):
    before = set(leftovers())
    sb = Sandbox(LIMITS)
    model = sb.load(escape / "fileops", scan=False)
    yield model
    sb.close()
    assert set(leftovers()) <= before


def test_readfile_positive_control_reads_the_model_itself(fileops, escape):
    data = fileops.predict({"path": b("/model/saved_model.pb")}, "read")["data"]
    assert bytes(data) == (escape / "fileops" / "saved_model.pb").read_bytes()


@pytest.mark.parametrize("which", ["canary", "checkout", "/etc/passwd", "/root/.bashrc", "/etc/hostname",
                                   "/proc/1/root/etc/passwd"])
def test_readfile_returns_nothing_of_the_host(fileops, canary, which):
    path, secret = canary
    target = {"canary": str(path), "checkout": str(ROOT / "pyproject.toml")}.get(which, which)
    with pytest.raises(ExecutionFailed, match="NotFound|No such file|Permission") as exc:
        fileops.predict({"path": b(target)}, "read")
    assert secret not in str(exc.value)


def test_writefile_stays_inside(fileops, canary):
    path, secret = canary
    # positive control: the op works on the sandbox's private /tmp
    assert bytes(fileops.predict({"path": b("/tmp/written.txt"), "data": b("inside")}, "write")["readback"]) == b"inside"
    host_tmp_target = "/tmp/modelwarden-escape-lambda.txt"
    out = fileops.predict({"path": b(host_tmp_target), "data": b("pwned")}, "write")
    assert bytes(out["readback"]) == b"pwned"  # written... to the private tmpfs
    assert not os.path.exists(host_tmp_target)
    # the canary's path exists only on the host: WriteFile recreates it in the private /tmp
    assert bytes(fileops.predict({"path": b(str(path)), "data": b("pwned")}, "write")["readback"]) == b"pwned"
    assert path.read_text() == secret
    for target in ("/model/evil.txt", "/usr/lib/evil.txt", "/evil.txt"):
        with pytest.raises(ExecutionFailed, match="Read-only file system|Permission denied|NotFound"):
            fileops.predict({"path": b(target), "data": b("pwned")}, "write")
    # The checkout is not in the sandbox's view. Where it lives under /tmp (a CI clone may), the
    # write lands in the sandbox's private tmpfs; anywhere else it fails. Either way the host is untouched.
    checkout_target = ROOT / "escape-written.txt"
    if str(ROOT).startswith("/tmp/"):
        fileops.predict({"path": b(str(checkout_target)), "data": b("pwned")}, "write")
    else:
        with pytest.raises(ExecutionFailed, match="Read-only file system|Permission denied|NotFound"):
            fileops.predict({"path": b(str(checkout_target)), "data": b("pwned")}, "write")
    assert not checkout_target.exists()


def test_print_v2_to_file_leaves_the_host_untouched(fileops):
    assert float(fileops.predict({"x": np.float32(7)}, "print_to_file")["y"]) == 7.0
    assert not os.path.exists("/tmp/modelwarden-escape-printed.txt")


def test_matching_files_sees_nothing_of_the_host(fileops, tmp_path):
    host_dir = Path(f"/tmp/modelwarden-escape-glob-{os.getpid()}")
    host_dir.mkdir(exist_ok=True)
    (host_dir / "host-file.txt").write_text("on the host")
    root = bytes(fileops.predict({"pattern": b("/*")}, "glob")["names"]).decode().split("\n")
    assert root and set(root) <= {"/dev", "/etc", "/lib", "/lib64", "/lib32", "/model", "/opt", "/proc", "/tmp", "/usr"}
    assert "/model" in root  # positive control
    try:
        for pattern in (f"{host_dir}/*", "/tmp/modelwarden-escape-glob-*", f"{ROOT}/*", "/home/*", "/root/*",
                        "/work/*", "/etc/*", f"{tmp_path}/*"):
            names = bytes(fileops.predict({"pattern": b(pattern)}, "glob")["names"]).decode()
            seen = set(filter(None, names.split("\n")))
            # Anything the host has at these paths must be invisible. (The sandbox may list files it
            # wrote itself to its private /tmp, and its own minimal /etc/ld.so.cache.)
            leaked = (seen & set(globmod.glob(pattern))) - {"/etc/ld.so.cache"}
            assert not leaked, (pattern, sorted(leaked))
            assert seen <= {"/etc/ld.so.cache"} or all(n.startswith("/tmp/") for n in seen), (pattern, names)
    finally:
        import shutil

        shutil.rmtree(host_dir, ignore_errors=True)


def test_checkpoint_armed_writefile_leaves_the_host_untouched(escape):
    with Sandbox(LIMITS) as sb:
        out = sb.load(escape / "armed", scan=False).predict({"x": np.float32(1)})
    assert float(out["armed"]) == 1.0  # the checkpoint did arm the branch...
    assert float(out["written"]) > 0  # ...and WriteFile ran inside the sandbox
    assert not os.path.exists("/tmp/modelwarden-escape-armed.txt")


def _lambda(escape, name, limits=LIMITS) -> np.ndarray:
    with Sandbox(limits) as sb:
        model = sb.load(escape / f"lambda_{name}.keras", scan=False, keras_safe_mode=False)
        out = model.predict({"x": np.zeros((1, 8), np.float32)})
        # the worker is still healthy afterwards
        model.predict({"x": np.zeros((1, 8), np.float32)})
    (value,) = out.values()
    return value[0]


def test_keras_lambda_os_system_changes_nothing_on_the_host(escape):
    rc_system, py_write, execv_errno = _lambda(escape, "system")[:3]
    assert rc_system != 0  # /bin/sh could not be executed
    assert py_write == 1.0  # the attacker's Python really ran (and wrote to the private /tmp)
    assert execv_errno == errno.EPERM  # execve is denied by seccomp
    # clean_host_files asserts that none of the files exists on the host


def test_socket_creation_fails(escape):
    res = _lambda(escape, "socket")
    inet, inet6, netlink, packet, udp, unix = res[:6]
    for value in (inet, inet6, netlink, packet, udp):
        assert value == errno.EAFNOSUPPORT
    assert unix == 0  # positive control: the code ran and AF_UNIX is allowed


def test_fork_bomb_hits_the_process_limit(escape):
    limits = SandboxLimits(timeout_s=120, max_processes=96)
    forks, err = _lambda(escape, "forkbomb", limits)[:2]
    assert err == errno.EAGAIN
    assert 0 <= forks < limits.max_processes


def test_ptrace_of_the_parent_and_everything_else_fails(escape):
    ok, first_errno, vm_errno = _lambda(escape, "ptrace")[:3]
    assert ok == 0
    assert first_errno == errno.EPERM
    assert vm_errno == errno.EPERM
