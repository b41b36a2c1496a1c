"""A classic-BPF interpreter for seccomp filters, to read a filter's verdict without making the syscall.

libseccomp exports the exact program the kernel runs (``seccomp_export_bpf``); :func:`verdict`
runs it on a ``struct seccomp_data`` the way the kernel does, so every syscall number and
argument pattern can be checked on the host without invoking anything dangerous.
"""

from __future__ import annotations

import os
import struct
import tempfile

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

Program = list[tuple[int, int, int, int]]


def export(flt) -> Program:
    """The BPF program of a built ``modelwarden.sandbox.seccomp.Filter``."""
    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f.fileno())
        f.seek(0)
        raw = f.read()
    assert raw and len(raw) % 8 == 0
    return [struct.unpack_from("<HBBI", raw, i) for i in range(0, len(raw), 8)]


def seccomp_data(nr: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64) -> bytes:
    full = tuple(args) + (0,) * (6 - len(args))
    return struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0, *(a & 0xFFFFFFFFFFFFFFFF for a in full))


def verdict(prog: Program, nr: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64) -> int:
    """The filter's 32-bit return value (action | data) for this syscall."""
    data = seccomp_data(nr, args, arch)
    a = x = 0
    mem = [0] * 16
    pc = 0
    for _ in range(len(prog) + 1):  # seccomp BPF only jumps forward
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode = code & 0xE0
            assert code & 0x18 == 0x00, "only 32-bit loads in seccomp"
            a = {0x00: lambda: k, 0x20: lambda: struct.unpack_from("<I", data, k)[0], 0x60: lambda: mem[k],
                 0x80: lambda: len(data)}[mode]()
        elif cls == 0x01:  # LDX
            x = {0x00: lambda: k, 0x60: lambda: mem[k], 0x80: lambda: len(data)}[code & 0xE0]()
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            src = x if code & 0x08 else k
            op = code & 0xF0
            a = {0x00: lambda: a + src, 0x10: lambda: a - src, 0x20: lambda: a * src, 0x30: lambda: a // src,
                 0x40: lambda: a | src, 0x50: lambda: a & src, 0x60: lambda: a << src, 0x70: lambda: a >> src,
                 0x80: lambda: -a, 0x90: lambda: a % src, 0xA0: lambda: a ^ src}[op]() & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            src = x if code & 0x08 else k
            taken = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if taken else jf
        elif cls == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        else:  # MISC: TAX / TXA
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
    raise AssertionError("BPF program did not return")


def run_in_filtered_child(flt_factory, calls: list[tuple[int, tuple[int, ...]]]) -> list[tuple[int, int]]:
    """Fork, load the filter in the child (no_new_privs), make ``calls`` (harmless arguments only!).

    Returns (return value, errno) per call.  The child writes its results to a pipe and exits.
    """
    import ctypes
    import json

    from modelwarden.sandbox import linux

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            linux.set_no_new_privs()
            flt = flt_factory()
            flt.load()
            out = []
            for nr, args in calls:
                ctypes.set_errno(0)
                rc = libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
                out.append((rc, ctypes.get_errno()))
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return [tuple(x) for x in json.loads(b"".join(chunks))]
