#!/usr/bin/env python3
"""Assembles the English evaluation text used for perplexity comparisons.

Real prose that every machine of this project has, in a fixed order: Debian's license
texts (/usr/share/common-licenses, package base-files) followed by CPython 3.11's
documentation topics (pydoc_data.topics, shipped with the interpreter). About 1 MB,
roughly 230K SmolLM2 tokens. Writes $MCC_CACHE/data/ppl-text.txt (default
~/.cache/mcc) and prints its path and sha256; tests check the sha256 so that golden
perplexities are only compared on the same text.
"""
import hashlib
import os
import pathlib

import pydoc_data.topics as topics

cache = pathlib.Path(os.environ.get("MCC_CACHE", pathlib.Path.home() / ".cache/mcc"))
out = cache / "data/ppl-text.txt"
parts = []
lic = pathlib.Path("/usr/share/common-licenses")
for f in sorted(lic.iterdir()):
    if f.is_file() and not f.is_symlink():
        parts.append(f.read_text(encoding="utf-8"))
for key in sorted(topics.topics):
    parts.append(topics.topics[key])
text = "\n\n".join(p.strip("\n") for p in parts) + "\n"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(text, encoding="utf-8")
print(out, hashlib.sha256(text.encode()).hexdigest())
