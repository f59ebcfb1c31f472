#!/usr/bin/env python3
"""Summarises the `perf` recordings of `loadtest/profile.sh`.

    profile.py machine FILE   samples of the whole machine (perf record -a): share by process,
                              and the RSA (libcrypto) share of the workers and the TSA
    profile.py worker FILE    samples of one worker with call graphs (perf record --call-graph
                              dwarf): share by phase (a sample counts for every phase its stack
                              passes through) and the largest functions by own time
"""

import collections
import re
import subprocess
import sys

# A process is named by the first of these seen in its samples' stacks.
PROCESSES = ("shomei-worker", "shomei-tsa", "shomei-api", "shomei-loadtest", "postgres", "redis")

# A worker's phases: a sample counts for each whose pattern matches a frame of its stack (and,
# for a part of a phase, whose phase's pattern does too).
PHASES = [
    ("HSM signature (SoftHSM2, OpenSSL)", r"shomei_signing::hsm::Hsm::sign"),
    ("signing: everything in sign_pdf_hashed", r"shomei_signing::sign_pdf_hashed"),
    ("  PDF: read the base", r"shomei_signing::pdf::load_counting_pages"),
    ("  PDF: make the revision", r"shomei_signing::pdf::PreparedRevision"),
    ("  time-stamp exchange", r"shomei_signing::tsp::TsaClient"),
    ("    of it: checking the token", r"shomei_signing::tsp::verify_response", r"TsaClient"),
    ("storage: read the base", r"shomei_storage::BlockingStorage::get_verified_hashing"),
    ("  of it: SHA-256", r"sha2::", r"shomei_storage::BlockingStorage::get_verified_hashing"),
    ("  of it: AES-GCM", r"shomei_vault::sealed::open_object", r"shomei_storage::BlockingStorage::get"),
    ("storage: write the revision", r"shomei_storage::BlockingStorage::put_pdf_revision"),
    ("database (diesel, libpq)", r"diesel::|libpq"),
    ("apalis and Redis", r"apalis|redis::"),
    ("kernel: thread switches and wake-ups", r"finish_task_switch|schedule|futex|try_to_wake_up"),
    ("allocator (malloc, free)", r"malloc|cfree|_int_free|realloc|unlink_chunk"),
]


def samples(path):
    """Each sample as (command, pid, [frame, …] innermost first)."""
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,pid,tid,ip,sym,dso"],
        capture_output=True, text=True, errors="replace", check=True,
    ).stdout
    current = None
    for line in out.splitlines():
        if not line.strip():
            if current:
                yield current
            current = None
        elif line[0] not in " \t":
            m = re.match(r"\s*(.+?)\s+(\d+)/\d+", line)
            current = (m.group(1), int(m.group(2)), []) if m else None
        elif current:
            parts = line.strip().split(None, 1)
            current[2].append(parts[1] if len(parts) > 1 else "")
    if current:
        yield current


def dso(frame):
    m = re.search(r"\(([^)]*)\)\s*$", frame)
    return m.group(1).rsplit("/", 1)[-1] if m else "?"


def machine(path):
    all_samples = list(samples(path))
    names = {}
    for _, pid, stack in all_samples:
        for frame in stack:
            for name in PROCESSES:
                if f"/{name}" in frame or f"({name}" in frame:
                    names.setdefault(pid, name)
    for comm, pid, _ in all_samples:
        names.setdefault(pid, comm)
    total = len(all_samples)
    by_process = collections.Counter(names[pid] for _, pid, _ in all_samples)
    rsa = collections.Counter(
        names[pid] for _, pid, stack in all_samples
        if stack and dso(stack[0]) == "libcrypto.so.3"
    )
    print(f"{total} samples of the whole machine; share by process (of it in libcrypto, RSA):")
    for name, n in by_process.most_common(12):
        crypto = f"  ({100 * rsa[name] / total:4.1f} % in libcrypto)" if rsa[name] else ""
        print(f"  {name:18s} {100 * n / total:5.1f} %{crypto}")


def worker(path):
    all_samples = list(samples(path))
    total = len(all_samples)
    print(f"{total} samples of one worker; share by phase (a sample counts for each it is in):")
    for name, pattern, *within in PHASES:
        patterns = [re.compile(p) for p in [pattern, *within]]
        n = sum(
            1 for _, _, stack in all_samples
            if all(any(r.search(f) for f in stack) for r in patterns)
        )
        print(f"  {name:40s} {100 * n / total:5.1f} %")
    own = collections.Counter()
    for _, _, stack in all_samples:
        if stack:
            symbol = re.sub(r"^[0-9a-f]+\s+", "", stack[0])
            symbol = re.sub(r"\+0x[0-9a-f]+|\s*\(.*\)$", "", symbol)
            own[f"[{dso(stack[0])}]" if symbol == "[unknown]" else symbol[:90]] += 1
    print("largest functions by own time:")
    for symbol, n in own.most_common(15):
        print(f"  {100 * n / total:5.1f} %  {symbol}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("machine", "worker"):
        sys.exit(__doc__)
    {"machine": machine, "worker": worker}[sys.argv[1]](sys.argv[2])
