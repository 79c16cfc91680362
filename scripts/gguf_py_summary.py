#!/usr/bin/env python3
"""Summarise a GGUF file with gguf-py's GGUFReader, in the shape of `mcc inspect --json
--tensors`, so the e2e test can compare an independent reading with mcc's.

Output (JSON on stdout):
  {version, alignment, data_offset, n_kv, n_tensors,
   metadata: [{key, type, value} | {key, type: "array", elem_type, len}],
   tensors: [{name, type, dims (ggml order), offset (relative to data_offset), n_bytes}]}

Usage: gguf_py_summary.py FILE.gguf
"""

import json
import sys

from gguf import GGUFReader, GGUFValueType

TYPE_NAMES = {
    GGUFValueType.UINT8: "u8",
    GGUFValueType.INT8: "i8",
    GGUFValueType.UINT16: "u16",
    GGUFValueType.INT16: "i16",
    GGUFValueType.UINT32: "u32",
    GGUFValueType.INT32: "i32",
    GGUFValueType.FLOAT32: "f32",
    GGUFValueType.BOOL: "bool",
    GGUFValueType.STRING: "string",
    GGUFValueType.ARRAY: "array",
    GGUFValueType.UINT64: "u64",
    GGUFValueType.INT64: "i64",
    GGUFValueType.FLOAT64: "f64",
}

# GGUFReader exposes the header counts as pseudo-fields named GGUF.*; they are not keys.
HEADER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


def scalar(kind, value):
    """A scalar as plain JSON: floats as Python floats (exact for f32), ints as ints."""
    if kind in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return float(value)
    if kind == GGUFValueType.BOOL:
        return bool(value)
    if kind == GGUFValueType.STRING:
        return str(value)
    return int(value)


def field_entry(key, field):
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        # types = [ARRAY, elem type, ...]; data holds one part index per element.
        elem = field.types[1] if len(field.types) > 1 else None
        return {
            "key": key,
            "type": "array",
            "elem_type": TYPE_NAMES[elem] if elem is not None else None,
            "len": len(field.data),
        }
    return {"key": key, "type": TYPE_NAMES[kind], "value": scalar(kind, field.contents())}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    reader = GGUFReader(sys.argv[1])
    fields = reader.fields
    metadata = [field_entry(k, f) for k, f in fields.items() if k not in HEADER_FIELDS]
    tensors = [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "offset": int(t.data_offset) - int(reader.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]
    summary = {
        "version": int(fields["GGUF.version"].contents()),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "n_kv": int(fields["GGUF.kv_count"].contents()),
        "n_tensors": int(fields["GGUF.tensor_count"].contents()),
        "metadata": metadata,
        "tensors": tensors,
    }
    json.dump(summary, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
