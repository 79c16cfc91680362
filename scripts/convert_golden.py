#!/usr/bin/env python3
"""Summarises a GGUF for the `mcc convert` goldens (tests/golden/convert/*.txt).

    python3 scripts/convert_golden.py FILE.gguf > summary.txt

One tab-separated line per item, so a mismatch says what differs:
    file    SIZE  SHA256
    kv      KEY   TYPE_ID  SHA256_OF_THE_ENCODED_VALUE  READABLE_VALUE
    tensor  NAME  GGML_TYPE_ID  DIMS  OFFSET  SHA256_OF_THE_DATA
tests/e2e_convert.rs writes the same lines for mcc's output (READABLE is not compared).
"""

import hashlib
import json
import struct
import sys

SIZES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2)}  # F32, F16, BF16: (elements, bytes) per block


def main(path):
    data = open(path, "rb").read()
    pos = 4

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return v

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            items = [value(et) for _ in range(n)]
            return ("array", et, n)
        return take(SIZES[t])

    out = [f"file\t{len(data)}\t{hashlib.sha256(data).hexdigest()}"]
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    assert version == 3
    alignment = 32
    for _ in range(n_kv):
        key = string()
        t = take("I")
        start = pos
        v = value(t)
        raw = data[start:pos]
        if key == "general.alignment":
            alignment = v
        if isinstance(v, tuple):
            readable = f"[{v[1]}; {v[2]}]"
        elif isinstance(v, str):
            readable = json.dumps(v[:60], ensure_ascii=False)
        else:
            readable = repr(v)
        out.append(f"kv\t{key}\t{t}\t{hashlib.sha256(raw).hexdigest()}\t{readable}")
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    data_start = -(-pos // alignment) * alignment
    for name, dims, t, off in infos:
        n = 1
        for d in dims:
            n *= d
        blk_elems, blk_bytes = BLOCK[t]
        nbytes = n // blk_elems * blk_bytes
        blob = data[data_start + off:data_start + off + nbytes]
        dims_s = ",".join(map(str, dims))
        out.append(f"tensor\t{name}\t{t}\t{dims_s}\t{off}\t{hashlib.sha256(blob).hexdigest()}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
