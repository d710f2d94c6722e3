"""What a measurement was made on: the CPU's model, core count and ISA flags, read from /proc/cpuinfo once.

One home for these facts: the bench's `machine` record, OpenVINO's IR sidecar, the `prune.round_to: auto` sweep
cache key, the latency tables' key (latency.py) and `vib-deploy env` all read them here. Where a figure is shown, the
CPU is named with its vector ISA (`cpu_label`: AVX2 / AVX-512 / AVX-512 VNNI / AVX-VNNI / AMX): the same net's
speedup differs between ISAs. `cpu_info` stays as it was: it is part of cache keys and sidecar checks.
"""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# x86 ISA extensions CPU kernels are picked by (OpenVINO's CPU plugin, oneDNN), as /proc/cpuinfo's flags name them
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


# the vector ISA levels a figure depends on (int8 and fp32 kernels differ by them), each with the flag that says it
VECTOR_ISA = (
    ("AVX2", "avx2"),
    ("AVX-512", "avx512f"),
    ("AVX-512 VNNI", "avx512_vnni"),
    ("AVX-VNNI", "avx_vnni"),
    ("AMX", "amx_tile"),
)


def vector_isa(flags: Iterable[str]) -> str:
    """The vector ISA levels among `flags` (/proc/cpuinfo's names), e.g. "AVX2, AVX-512, AVX-512 VNNI"; none of them:
    "no AVX2"."""
    have = set(flags)
    return ", ".join(name for name, flag in VECTOR_ISA if flag in have) or "no AVX2"


def cpu_label(machine: Mapping[str, object]) -> str:
    """ "<CPU model> (<vector ISA>)" from a machine record; one made before the ISA was recorded says so."""
    return f"{machine.get('cpu')} ({machine.get('vector_isa') or 'vector ISA not recorded'})"


@dataclass(frozen=True)
class CpuFacts:
    model: str  # /proc/cpuinfo's first "model name"; else what `platform` says; else "unknown"
    cores: int  # logical CPUs (os.cpu_count)
    isa: tuple[str, ...]  # the ISA_FLAGS this CPU has, in ISA_FLAGS' order

    @property
    def vector_isa(self) -> str:
        return vector_isa(self.isa)


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """(first "model name", first "flags" line's flags) of a /proc/cpuinfo text."""
    name, flags = None, set()
    for line in text.splitlines():
        if line.startswith("model name") and name is None:
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    return name, flags


@cache
def cpu_facts() -> CpuFacts:
    """This machine's CPU (read once per process)."""
    try:
        name, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        name, flags = None, set()
    model = name or platform.processor() or platform.machine() or "unknown"
    return CpuFacts(model, os.cpu_count() or 1, tuple(f for f in ISA_FLAGS if f in flags))


def cpu_info() -> dict[str, Any]:
    """{"cpu": model, "isa": [flags]}: the CPU as an IR sidecar and the widths sweep's cache key record it."""
    facts = cpu_facts()
    return {"cpu": facts.model, "isa": list(facts.isa)}


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, its vector ISA, cores, Python, this process's peak RSS (bench.json's
    machine)."""
    facts = cpu_facts()
    return {
        "cpu": facts.model,
        "vector_isa": facts.vector_isa,
        "cores": facts.cores,
        "python": platform.python_version(),
        "max_rss_self_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
