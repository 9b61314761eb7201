#!/usr/bin/env python3
"""Names the functions whose pages first-touch.c saw executed.

Usage: functions.py BINARY TOUCHES LIST

Reads the offsets in TOUCHES (written by first-touch.c for BINARY), finds the function each
one outside the `.text.hot` section falls in with `nm` and `readelf`, and merges their names
into LIST (one mangled name per line, sorted; `#` lines at its head are kept). Prints how
many names were new.
"""
import bisect
import re
import subprocess
import sys

binary, touches_path, list_path = sys.argv[1:4]

# The executable segment: where its file offsets land in the binary's addresses.
delta = None
for line in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    fields = line.split()
    if fields[:1] == ["LOAD"] and "E" in fields[6:-1]:
        delta = int(fields[2], 16) - int(fields[1], 16)
if delta is None:
    sys.exit(f"{binary}: no executable LOAD segment")

# The section the layout already placed (absent before the first layout): a function found in
# it is listed already, under one of the names its address has.
hot = (0, 0)
for line in subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    fields = line.replace("[ ", "[").split()
    if len(fields) > 5 and fields[1] == ".text.hot":
        hot = (int(fields[3], 16), int(fields[3], 16) + int(fields[5], 16))

functions = []
for line in subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    fields = line.split()
    if len(fields) == 4 and fields[2] in "tTwW":
        functions.append((int(fields[0], 16), int(fields[1], 16), fields[3]))
functions.sort()
starts = [f[0] for f in functions]

with open(touches_path) as touches:
    header = touches.readline().split()
    if header[:1] != ["offset"]:
        sys.exit(f"{touches_path}: not a first-touch record")
    mapping_offset = int(header[1], 16)
    addresses = [mapping_offset + int(l, 16) + delta for l in touches if l.strip()]

found = set()
for address in addresses:
    i = bisect.bisect_right(starts, address) - 1
    if hot[0] <= address < hot[1]:
        continue
    if i >= 0 and address < functions[i][0] + max(functions[i][1], 1):
        # Functions LLVM found identical share one body: each other name is an alias into the
        # section named after one of them, which only the linker knows, so every name at
        # that address is listed.
        start = functions[i][0]
        while i > 0 and functions[i - 1][0] == start:
            i -= 1
        while i < len(functions) and functions[i][0] == start:
            # A promoted local's `.llvm.<hash>` suffix changes with the code; the list keeps
            # the stable part and the linker script matches the suffix.
            found.add(re.sub(r"\.llvm\.\d+$", "", functions[i][2]))
            i += 1

head, names = [], set()
try:
    with open(list_path) as existing:
        for line in existing:
            line = line.strip()
            if line.startswith("#"):
                head.append(line)
            elif line:
                names.add(line)
except FileNotFoundError:
    pass
# Names this binary lacks stay: a build that selects other packages or features gives the
# same function another hash, and the list serves each such build with its own names.
new = found - names
with open(list_path, "w") as out:
    for line in head:
        out.write(line + "\n")
    for name in sorted(names | found):
        out.write(name + "\n")
print(len(new))
