#!/usr/bin/env python3
"""Makes the small Hugging Face Llama checkpoints `mcc convert` is tested on.

    python3 scripts/make-hf-checkpoints.py OUT_DIR [--vocab ggml-vocab-llama-bpe.gguf]

Writes three checkpoint directories under OUT_DIR (their names are part of the test: the
converter derives `general.*` keys from them):

- tiny-llama-sharded-v0.1: 2 layers, hidden 64, GQA 4/2 heads; two safetensors shards
  with model.safetensors.index.json; BF16, F16 and F32 tensors mixed (one F32 matrix
  holds NaNs, an infinity, f16-subnormal and f16-overflowing values); an untied lm_head;
  vocab_size 128264 (8 ids without a token); a user-defined added token; merges as
  "a b" strings; generation_config.json.
- Llama-3.1-Minitron-4B-Width-Base: Minitron's layout at 2 layers: head_dim 64 while
  hidden / heads = 32, GQA 4/2, Llama 3.1 rope scaling (llama3, factor 8,
  original_max_position_embeddings 8192, rope_theta 500000); all BF16, one file;
  merges as pairs; a chat template.
- tied-embd-chat: tied embeddings (no lm_head), F16, rope_theta an integer, no head_dim.

Weights come from a counter-based hash (splitmix64), so the bytes depend on nothing but
this file; the tokenizer is Llama 3's BPE vocabulary and merges, read from llama.cpp's
ggml-vocab-llama-bpe.gguf. Needs only numpy.
"""

import argparse
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

DEFAULT_VOCAB = Path.home() / ".cache/mcc/llama.cpp/models/ggml-vocab-llama-bpe.gguf"


def read_gguf_strings(path):
    """The tokenizer arrays of a GGUF vocab file: tokens, token types, merges."""
    data = path.read_bytes()
    pos = 4  # after the magic

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos : pos + n].decode("utf-8")
        pos += n
        return s

    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et = take("I")
            n = take("Q")
            return [value(et) for _ in range(n)]
        return take(sizes[t])

    assert data[:4] == b"GGUF", path
    take("I")  # version
    take("Q")  # tensors
    n_kv = take("Q")
    kv = {}
    for _ in range(n_kv):
        key = string()
        kv[key] = value(take("I"))
    return kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"], kv["tokenizer.ggml.merges"]


def splitmix(seed, n):
    """n pseudo-random uint64s from a counter: splitmix64(seed·2^32 + i)."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(seed << 32)
        z = z * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def weights(seed, shape, scale):
    """Uniform values in [-scale, scale), as float32, from 24 random bits each."""
    n = int(np.prod(shape))
    u = (splitmix(seed, n) >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    return ((u * 2.0 - 1.0) * scale).astype(np.float32).reshape(shape)


def encode(x, dtype):
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    if dtype == "F16":
        return x.astype("<f2").tobytes()
    # BF16: the top half of each f32 (truncated: exact and version-independent).
    return (x.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, np.float32 array), written in this order."""
    header, blobs, off = {}, [], 0
    for name, dtype, x in tensors:
        b = encode(x, dtype)
        header[name] = {"dtype": dtype, "shape": list(x.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def llama_tensors(seed, cfg, tied, dtype_of):
    """(name, dtype, values) for every tensor of a llama checkpoint."""
    h, ff, nl = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv, v = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["vocab_size"]
    shapes = [("model.embed_tokens.weight", (v, h)), ("model.norm.weight", (h,))]
    if not tied:
        shapes.append(("lm_head.weight", (v, h)))
    for i in range(nl):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (ff, h)),
            (p + "mlp.up_proj.weight", (ff, h)),
            (p + "mlp.down_proj.weight", (h, ff)),
        ]
    out = []
    for k, (name, shape) in enumerate(shapes):
        x = weights(seed * 1000 + k, shape, 1.0 if len(shape) == 1 else 0.05)
        out.append((name, dtype_of(name), x))
    return out


def tokenizer_json(tokens, types, merges, pair_merges, user_token=None):
    vocab, added = {}, []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty == 1:
            vocab[t] = i
        else:
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True})
    if user_token is not None:
        i, content = user_token
        added[i - 128000] = {"id": i, "content": content, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": True, "special": False}
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                      "tokens": ["<|begin_of_text|>"]}}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "vocab": vocab,
                  "merges": [m.split(" ") for m in merges] if pair_merges else merges},
    }


def tokenizer_config(chat_template=None):
    c = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<|begin_of_text|>",
         "clean_up_tokenization_spaces": True, "eos_token": "<|end_of_text|>",
         "model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast"}
    if chat_template is not None:
        c["chat_template"] = chat_template
    return c


CHAT = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB)
    args = ap.parse_args()
    tokens, types, merges = read_gguf_strings(args.vocab)
    assert len(tokens) == 128256, len(tokens)
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. Tiny, sharded, mixed dtypes, untied, padded vocabulary.
    d = args.out / "tiny-llama-sharded-v0.1"
    d.mkdir(exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
           "rope_theta": 10000.0, "vocab_size": 128264, "tie_word_embeddings": False,
           "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16"}
    dump(d / "config.json", cfg)

    def tiny_dtype(name):
        if name.endswith("norm.weight") or "v_proj" in name:
            return "F32"
        if "mlp" in name or "o_proj" in name:
            return "F16"
        return "BF16"

    ts = llama_tensors(1, cfg, False, tiny_dtype)
    # Special values in one F32 matrix: NaNs (quiet and signalling), -inf, an f16
    # subnormal, and a value that overflows f16.
    for name, _, x in ts:
        if name == "model.layers.1.self_attn.v_proj.weight":
            flat = x.reshape(-1).view(np.uint32)
            flat[:6] = [0x7FC00000, 0x7F800001, 0xFF800000, 0x33800000, 0x477FF000, 0x387FE000]
    first = [t for t in ts if not t[0].startswith("model.layers.1.")]
    second = [t for t in ts if t[0].startswith("model.layers.1.")]
    shards = {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second}
    weight_map = {}
    for fname, part in shards.items():
        # Not in name order inside the file: the converter sorts.
        write_safetensors(d / fname, list(reversed(part)))
        weight_map.update({t[0]: fname for t in part})
    dump(d / "model.safetensors.index.json",
         {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))})
    dump(d / "tokenizer.json", tokenizer_json(tokens, types, merges, False,
                                             user_token=(128010, "\u2581custom\u2581word")))
    dump(d / "tokenizer_config.json", tokenizer_config())
    dump(d / "generation_config.json", {"bos_token_id": 128000, "eos_token_id": 128001,
                                        "do_sample": True, "temperature": 0.6, "top_p": 0.9,
                                        "top_k": 40, "repetition_penalty": 1.1})

    # 2. Minitron's layout: explicit head_dim != hidden / heads, Llama 3.1 rope scaling.
    d = args.out / "Llama-3.1-Minitron-4B-Width-Base"
    d.mkdir(exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
           "head_dim": 64, "intermediate_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
           "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
           "vocab_size": 128256, "tie_word_embeddings": False, "attention_bias": False,
           "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
           "torch_dtype": "bfloat16"}
    dump(d / "config.json", cfg)
    write_safetensors(d / "model.safetensors", llama_tensors(2, cfg, False, lambda _: "BF16"))
    dump(d / "tokenizer.json", tokenizer_json(tokens, types, merges, True))
    dump(d / "tokenizer_config.json", tokenizer_config(CHAT))
    dump(d / "generation_config.json", {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
                                        "temperature": 0.6, "top_p": 0.9})

    # 3. Tied embeddings, F16.
    d = args.out / "tied-embd-chat"
    d.mkdir(exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-06,
           "rope_theta": 10000, "vocab_size": 128256, "tie_word_embeddings": True,
           "bos_token_id": 128000, "eos_token_id": 128009, "pad_token_id": 128004,
           "torch_dtype": "float16"}
    dump(d / "config.json", cfg)
    write_safetensors(d / "model.safetensors", llama_tensors(3, cfg, True, lambda _: "F16"))
    dump(d / "tokenizer.json", tokenizer_json(tokens, types, merges, False))
    dump(d / "tokenizer_config.json", tokenizer_config(CHAT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
