#!/usr/bin/env python3
"""Self cost (Ir) per function in a callgrind dump, highest first: where a server's user-space
instructions go. Usage: callgrind_top.py DUMP [N] [--per COUNT]
       callgrind_top.py --mem DUMP   prints "TOTAL MEM": all Ir, and Ir in libc's
                                     memcpy/memmove/memset (bench/compare.sh uses it)

(callgrind_annotate of valgrind 3.19 charges everything to __libc_start_main on dumps with
inlined frames; this reads the format directly.)"""

import re
import sys
from collections import defaultdict


def main():
    mem_only = "--mem" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    per = 1
    if "--per" in sys.argv:
        per = int(sys.argv[sys.argv.index("--per") + 1])
        args.remove(str(per))
    path = args[0]
    top = int(args[1]) if len(args) > 1 else 25
    names = {}
    costs = defaultdict(int)
    current = None
    skip_next = False
    total = 0
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith(("fn=", "cfn=")):
            key, _, rest = line.partition("=")
            m = re.match(r"\((\d+)\)(?: (.*))?", rest)
            ident = m.group(1) if m else rest
            if m and m.group(2):
                names[ident] = m.group(2)
            if key == "fn":
                current = ident
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        if line and (line[0].isdigit() or line[0] in "+-*"):
            parts = line.split()
            if len(parts) >= 2:
                if skip_next:
                    skip_next = False
                    continue
                try:
                    c = int(parts[1])
                except ValueError:
                    continue
                costs[current] += c
                total += c
            continue
    if mem_only:
        mem = sum(c for ident, c in costs.items()
                  if re.match(r"_*(memcpy|memmove|memset|mempcpy)", names.get(ident, "")))
        print(total, mem)
        return
    print(f"total {total:,} Ir" + (f" = {total / per:,.0f} per unit ({per:,} units)" if per > 1 else ""))
    for ident, c in sorted(costs.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{c / per:12,.0f} {100 * c / total:5.1f}%  {names.get(ident, ident)}")


if __name__ == "__main__":
    main()
