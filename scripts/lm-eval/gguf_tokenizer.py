#!/usr/bin/env python3
"""Write a Hugging Face `tokenizer.json` (and `tokenizer_config.json`) made from a GGUF file's
own vocabulary, so lm-evaluation-harness can count context tokens without fetching a tokenizer
from the hub.

Usage: gguf_tokenizer.py MODEL.gguf OUT_DIR

Only byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`, as SmolLM2's) are handled: the
GGUF stores their tokens already in the byte-to-unicode form the `tokenizers` BPE model uses, and
the merges as "a b" lines, so the conversion is a copy. The pre-tokenizer is the one SmolLM2's
tokenizer uses (digits split one by one, then GPT-2's byte-level split), which is what
llama.cpp's `smollm` pre-tokenizer type stands for. Reads only the metadata (standard library).
"""

import json
import os
import struct
import sys

# GGUF metadata value types.
SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
STRING, ARRAY = 8, 9
# Pre-tokenizer types whose split this script reproduces.
KNOWN_PRE = {"smollm"}


def read_metadata(path):
    """The GGUF key-value metadata as a dict (arrays as lists)."""
    with open(path, "rb") as f:

        def unpack(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string():
            n = unpack("<Q")
            return f.read(n).decode("utf-8", errors="surrogateescape")

        def value(kind):
            if kind in SCALARS:
                return unpack(SCALARS[kind])
            if kind == STRING:
                return string()
            if kind == ARRAY:
                inner, n = unpack("<I"), unpack("<Q")
                return [value(inner) for _ in range(n)]
            raise ValueError(f"unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = unpack("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        unpack("<Q")  # tensor count
        n_kv = unpack("<Q")
        meta = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(unpack("<I"))
        return meta


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model, out = sys.argv[1], sys.argv[2]
    meta = read_metadata(model)
    kind = meta.get("tokenizer.ggml.model")
    pre = meta.get("tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in KNOWN_PRE:
        sys.exit(f"error: {model}: tokenizer {kind!r}/{pre!r} is not handled (only gpt2/smollm)")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = meta["tokenizer.ggml.merges"]

    def token(key):
        i = meta.get(key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    # Control tokens (type 3) are matched whole, never split by BPE.
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": merges,
        },
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": meta.get(f"{meta.get('general.architecture')}.context_length", 2048),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in config.items() if v is not None}, f, indent=1)
    print(f"{out}: {len(tokens)} tokens, {len(merges)} merges, {len(added)} special", file=sys.stderr)


if __name__ == "__main__":
    main()
