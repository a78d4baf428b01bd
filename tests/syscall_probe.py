"""Tiny static x86-64 programs that make one system call and exit with its errno.

The test images hold busybox only, which reports errors as text; these probes give the
errno itself. `probe(nr, *args)` returns an ELF executable that calls syscall `nr` with
`args` (integers, or bytes: a pointer to a NUL-terminated copy inside the program) and
exits with 0 if the call returned >= 0, else with the errno (-return value).

Made here, byte by byte, so the tests need no compiler: one PT_LOAD segment at
0x400000 holding the ELF header, the program header, the code and the strings.
"""

from __future__ import annotations

import os
import struct

BASE = 0x400000
_HEADERS = 64 + 56
# mov REG, imm64 for the syscall argument registers, in order: rdi rsi rdx r10 r8 r9.
_MOVABS = (b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba", b"\x49\xb8", b"\x49\xb9")
_TAIL = bytes.fromhex(
    "0f05"        # syscall
    "4885c0"      # test rax, rax
    "7804"        # js  fail
    "31ff"        # xor edi, edi
    "eb06"        # jmp exit
    "48f7d8"      # fail: neg rax
    "4889c7"      # mov rdi, rax
    "b83c000000"  # exit: mov eax, 60 (exit)
    "0f05"        # syscall
)

# x86-64 syscall numbers (asm/unistd_64.h)
OPEN, MKNOD, MOUNT, REBOOT, INIT_MODULE, KEXEC_LOAD, FINIT_MODULE, MKDIR, CLONE3 = (
    2, 133, 165, 169, 175, 246, 313, 83, 435)
O_RDONLY, O_WRONLY = 0, 1


def supported() -> bool:
    return os.uname().machine == "x86_64"


def probe(nr: int, *args: int | bytes) -> bytes:
    if len(args) > 6:
        raise ValueError("at most 6 arguments")
    code_size = 7 + 10 * len(args) + len(_TAIL)
    data = b""
    values = []
    for arg in args:
        if isinstance(arg, bytes):
            values.append(BASE + _HEADERS + code_size + len(data))
            data += arg + b"\0"
        else:
            values.append(arg & 0xFFFFFFFFFFFFFFFF)
    code = b"\x48\xc7\xc0" + struct.pack("<i", nr)  # mov rax, nr
    for reg, value in zip(_MOVABS, values, strict=False):
        code += reg + struct.pack("<Q", value)
    code += _TAIL
    assert len(code) == code_size
    size = _HEADERS + len(code) + len(data)
    elf = (b"\x7fELF\x02\x01\x01" + b"\0" * 9
           + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, BASE + _HEADERS, 64, 0, 0, 64, 56, 1,
                         0, 0, 0))
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0, BASE, BASE, size, size, 0x1000)
    return elf + phdr + code + data
