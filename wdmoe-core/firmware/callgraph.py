#!/usr/bin/env python3
"""Panic call sites reachable from entry points, on an object or ELF.

    callgraph.py OBJDUMP FILE ENTRY [ENTRY ...]

Disassembles FILE (the static library's relocatable object, or a linked
binary) with llvm-objdump, builds the static call graph from the call and
branch relocations (`R_ARM_THM_CALL`, `R_ARM_THM_JUMP24`, `R_RISCV_CALL_PLT`,
`R_RISCV_JAL`, ...) and, in linked code, from direct branches to other
functions, and prints every function whose name contains "panic" that is
reachable from an ENTRY, with one path to it. Exit status 1 when there is
one. Indirect calls (through registers) cannot be followed; each one on
the reachable paths is printed as a note.
"""
import re
import subprocess
import sys


def main():
    objdump, elf, entries = sys.argv[1], sys.argv[2], sys.argv[3:]
    out = subprocess.run(
        [objdump, "-d", "-r", "--no-show-raw-insn", "--demangle", elf],
        check=True, capture_output=True, text=True,
    ).stdout
    head = re.compile(r"^[0-9a-f]+ <(.+)>:$")
    target = re.compile(r"<([^>+]+)(\+0x[0-9a-f]+)?>\s*$")
    # `blx rN` (ARM) and `jalr` without a symbol (RISC-V; `auipc`+`jalr ra
    # <sym>` is a direct call, its target given by the R_RISCV_CALL_PLT).
    indirect = re.compile(r"^\s*[0-9a-f]+:\s+(blx\s+r|jalr\s+[^<]*$)")
    reloc = re.compile(
        r"^\s*[0-9a-f]+:\s+R_(ARM_THM_CALL|ARM_THM_JUMP24|ARM_CALL|ARM_JUMP24|ARM_THM_JUMP19|"
        r"RISCV_CALL|RISCV_CALL_PLT|RISCV_JAL|RISCV_BRANCH)\s+(.+?)(\+0x[0-9a-f]+)?$"
    )
    calls, notes, cur = {}, {}, None
    for line in out.splitlines():
        m = head.match(line)
        if m:
            cur = m.group(1)
            calls.setdefault(cur, set())
            continue
        if cur is None:
            continue
        if indirect.match(line):
            notes.setdefault(cur, []).append(line.strip())
        r = reloc.match(line)
        if r:
            if r.group(2) != cur:
                calls[cur].add(r.group(2))
            continue
        t = target.search(line)
        if t and t.group(1) != cur:
            calls[cur].add(t.group(1))
    seen, parent, todo = set(), {}, [e for e in entries if e in calls]
    missing = [e for e in entries if e not in calls]
    if missing:
        print("callgraph: entry points not in the binary: " + ", ".join(missing))
        return 2
    seen.update(todo)
    while todo:
        f = todo.pop()
        for g in calls.get(f, ()):
            if g not in seen:
                seen.add(g)
                parent[g] = f
                todo.append(g)
    # The hook setter is an entry point, not a panic.
    bad = sorted(f for f in seen if "panic" in f.lower() and not f.startswith("wdmoe_"))
    for f in bad:
        path, g = [f], f
        while g in parent:
            g = parent[g]
            path.append(g)
        print("PANIC-REACHABLE: " + " <- ".join(path))
    ind = sorted(f for f in seen if f in notes)
    for f in ind:
        print(f"note: indirect call in {f}: {notes[f][0]}")
    print(f"callgraph: {len(seen)} functions reachable from {len(entries)} entry points; "
          f"{len(bad)} panic functions among them")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
