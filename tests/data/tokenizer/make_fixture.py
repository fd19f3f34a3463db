#!/usr/bin/env python3
"""Writes the GPT-2 BPE tokenizer fixture of tests/tokenize/ (run from anywhere; writes beside itself).

The real GPT-2 vocabulary cannot be downloaded here, so this script TRAINS a small byte-level BPE with the
Hugging Face `tokenizers` library (ByteLevel pre-tokenizer = GPT-2's regex, all 256 byte symbols in the
initial alphabet, <|endoftext|> as the special token) and saves it in GPT-2's file format:

  vocab.json   {"token": id, ...}            (GPT-2's byte-to-unicode alphabet)
  merges.txt   "#version: 0.2" then "a b" lines, one merge per line, by rank

It checks that transformers' GPT2Tokenizer (slow, Python) and GPT2TokenizerFast (Rust) both load the pair
and agree, then writes cases.json: [{"text": str, "ids": [int]}] with the ids that GPT2TokenizerFast
produces (default settings: <|endoftext|> in text is split out as the special token). Texts are str, so
invalid UTF-8 cannot be a case here; pemoe's byte round trip covers it (see the tests).

Also writes include/pemoe/data/detail/unicode_ranges.hpp: the \\p{L} / \\p{N} range tables of the
pre-tokenizer, probed from HF's own pre-tokenizer for every code point (and prints its \\s set, which
pemoe::detail::is_space must equal).
"""
import json
import os
import random
import subprocess
import sys
import unicodedata

import tokenizers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import GPT2Tokenizer, GPT2TokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))

CORPUS = """The quick brown fox jumps over the lazy dog. It's a dog's life, isn't it? We'll see, they'd say.
I'm sure you've heard: they're here! Numbers 1234567890, 3.14159, 2,718 and 1e-9; dates 2024-01-31.
Café, naïve, résumé, Ångström, Straße, façade, coöperate, São Paulo, Zürich, Kraków, İstanbul.
Ελληνικά κείμενα, русский текст, עברית, العربية, हिन्दी, ไทย, 한국어, 日本語のテキスト, 中文文本。
Emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ and combining marks: e\u0301, a\u0308, n\u0303, Z\u0335\u0321.
    indented code:	tabs	and  double  spaces   triple
def f(x):\n    return x ** 2  # comment\n\n\nclass A:\n\tpass\r\n
Contractions: 's 't 're 've 'm 'll 'd, and uppercase 'S 'T 'RE; quotes 'single' "double" `back`.
Roman numerals Ⅻ, superscripts ² ³, fractions ½ ¾, full-width １２３ ＡＢＣ, Arabic-Indic ٣٤٥.
"""


def train():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    rng = random.Random(0)
    lines = CORPUS.split("\n")
    corpus = [CORPUS] + [" ".join(rng.sample(lines, 3)) for _ in range(20)]
    tok.train_from_iterator(corpus, trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    merges = data["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    with open(os.path.join(HERE, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(HERE, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(m + "\n")


def cases():
    texts = [
        "Hello world",
        "Hello, world! It's a dog's life; they're here, we'll see, I'd've.",
        "  leading spaces and trailing spaces   ",
        "tabs\tand\nnewlines\r\n\n\nand   runs \t \n of whitespace",
        "digits 0123456789 3.14159 1,000,000 ١٢٣ ²³ ½ Ⅻ １２３",
        "Café naïve résumé Ångström Straße İstanbul",
        "e\u0301 a\u0308 n\u0303 Z\u0335\u0321 combining",
        "日本語のテキスト 中文文本。 한국어 ไทย हिन्दी العربية עברית",
        "Emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️!",
        "'s 't 're 've 'm 'll 'd 'S 'RE ''s '' ' x'sy",
        "<|endoftext|>",
        "before<|endoftext|>after",
        "a <|endoftext|> b  <|endoftext|>  c<|endoftext|><|endoftext|>",
        "<|endoftext",
        "\u00a0nbsp\u2003em\u3000ideographic\u2028ls\u0085nel\u001cfs\u000bvt\u000cff",
        "x  \u00a0y \u00a0 z",
        "",
        " ",
        "\n",
        "   ",
        "a\n\n b",
        "end with space ",
        "punct!!! ... ??? --- ((())) [ok] {x: 1}",
        "mixed123abc 123abc abc123 $5.00 #tag @user",
        "\u0000\u0001\u0007\u007f\u0080\u00ff control chars",
        "Ḽơᶉëᶆ ȋṕšᶙṁ ḍỡḽǭᵳ ʂǐť ӓṁệẗ",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 math letters and digits",
        "def f(x):\n    return x ** 2  # comment\n\n\nclass A:\n\tpass\r\n",
    ]
    rng = random.Random(1)
    pool = list("abcXYZ 019'\t\n.,!é日😀\u0301\u00a0-_") + ["'s", "'ll", "<|endoftext|>", "  ", "\u3000"]
    for _ in range(60):
        texts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 40))))
    # Random code points from every plane (checks the \\p{L} / \\p{N} / \\s tables against HF's).
    ws = [" ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u2009", "\x1c", "\x1f", "\x85", "\u200b", "\ufeff",
          "'", "'s", "'re"]
    for _ in range(300):
        s = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.3:
                s.append(chr(rng.randint(0x20, 0x7E)))
            elif r < 0.45:
                s.append(rng.choice(ws))
            else:
                cp = rng.randint(0x80, 0x3FFFF if r < 0.8 else 0x10FFFF)
                if not 0xD800 <= cp <= 0xDFFF:
                    s.append(chr(cp))
        texts.append("".join(s))
    return texts


def main():
    train()
    v, m = os.path.join(HERE, "vocab.json"), os.path.join(HERE, "merges.txt")
    # transformers 5 ignores vocab_file=/merges_file= keyword arguments (an empty vocabulary): load the
    # directory instead. In transformers 5 both classes are backed by the Rust `tokenizers` library.
    assert os.path.exists(v) and os.path.exists(m)
    slow = GPT2Tokenizer.from_pretrained(HERE)
    fast = GPT2TokenizerFast.from_pretrained(HERE)
    assert len(fast) == 600, len(fast)
    out = []
    for t in cases():
        ids = fast.encode(t)
        ids_slow = slow.encode(t)
        if ids != ids_slow:
            print("slow/fast disagree on", repr(t), ids, ids_slow, file=sys.stderr)
        assert fast.decode(ids) == t, repr(t)
        out.append({"text": t, "ids": ids})
    with open(os.path.join(HERE, "cases.json"), "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=True) for c in out) + "\n]\n")
    print("eos id", fast.convert_tokens_to_ids("<|endoftext|>"), "vocab", len(fast), "cases", len(out))

    # Unicode tables for the header: HF's regex engine (Oniguruma) has its own Unicode version, newer than
    # Python's unicodedata and older than the `regex` module's, so the classes are probed from HF's
    # pre-tokenizer itself, for every code point: c is \\p{L} iff "a"+c is one pre-token, \\p{N} iff "1"+c
    # is, \\s iff "\\t"+c+"\\t" is.
    pre = fast.backend_tokenizer.pre_tokenizer
    one = lambda t: len(pre.pre_tokenize_str(t)) == 1
    letter, number, space = set(), set(), set()
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if one("a" + c):
            letter.add(cp)
        if one("1" + c):
            number.add(cp)
        if one("\t" + c + "\t"):
            space.add(cp)
    py_l = {cp for cp in range(0x110000) if unicodedata.category(chr(cp))[0] == "L"}
    py_n = {cp for cp in range(0x110000) if unicodedata.category(chr(cp))[0] == "N"}
    print("HF vs unicodedata %s: letters +%d -%d, numbers +%d -%d" % (
        unicodedata.unidata_version, len(letter - py_l), len(py_l - letter), len(number - py_n), len(py_n - number)))
    print("spaces:", " ".join("%04X" % cp for cp in sorted(space)))

    def ranges(members):
        rs, start = [], None
        for cp in range(0x110001):
            ok = cp in members
            if ok and start is None:
                start = cp
            elif not ok and start is not None:
                rs.append((start, cp - 1))
                start = None
        return rs

    header = os.path.join(HERE, "..", "..", "..", "include", "pemoe", "data", "detail", "unicode_ranges.hpp")
    with open(header, "w") as f:
        f.write("/// @file unicode_ranges.hpp\n")
        f.write("/// @brief Unicode \\\\p{L} (letters) and \\\\p{N} (numbers) as sorted code point ranges, for the GPT-2\n")
        f.write("/// pre-tokenizer. GENERATED by tests/data/tokenizer/make_fixture.py, which probes every code point\n")
        f.write("/// with Hugging Face tokenizers %s (the Unicode tables of its Oniguruma regex engine: general\n"
                % tokenizers.__version__)
        f.write("/// categories L* and N*, all planes; newer than Python's unicodedata %s). Do not edit by hand.\n"
                % unicodedata.unidata_version)
        f.write("#pragma once\n\n#include <cstdint>\n\nnamespace pemoe::detail {\n\n")
        f.write("/// The Hugging Face tokenizers version the tables below were probed from.\n")
        f.write("inline constexpr const char* kUnicodeTablesSource = \"tokenizers %s\";\n\n" % tokenizers.__version__)
        for name, members in (("Letter", letter), ("Number", number)):
            rs = ranges(members)
            f.write("/// Closed ranges [first, last] of general category %s*, sorted, disjoint.\n" % name[0])
            f.write("inline constexpr std::uint32_t k%sRanges[][2] = {\n" % name)
            for k in range(0, len(rs), 6):
                f.write("    " + " ".join("{0x%X, 0x%X}," % r for r in rs[k:k + 6]) + "\n")
            f.write("};\n\n")
        f.write("}  // namespace pemoe::detail\n")
    subprocess.run(["clang-format", "-i", header], check=True)  # the repository's .clang-format


if __name__ == "__main__":
    main()
