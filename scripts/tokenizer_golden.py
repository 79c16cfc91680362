#!/usr/bin/env python3
"""Golden token ids from llama.cpp's `llama-tokenize` for the tokenizer tests.

Builds a deterministic (seeded) multilingual / emoji / code / whitespace-heavy text of
cases, writes it to tests/data/tokenizer_cases.txt (cases separated by the line
`__mcc_case__`), and tokenizes every case with llama.cpp's llama_tokenize (through the
small batch front end scripts/tokenizer_golden_batch.cpp, so each vocabulary loads once)
on each vocabulary below. For SmolLM2 it writes tests/data/tokenizer_smollm2.ids: one
line per case, the ids with add_special and parse_special on, then ` | `, then the ids
with both off. For the other vocabularies, to keep the data small, it writes
tests/data/tokenizer_<name>.digest: per case and mode the FNV-1a 64 digest of the ids
as little-endian u32s, in hex.

Usage: python3 scripts/tokenizer_golden.py
Env:   MCC_LLAMA_SRC (default ~/.cache/mcc/llama.cpp): llama.cpp tree with build/bin
       MCC_MODELS    (default ~/.cache/mcc/models)
"""
import os
import pathlib
import random
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests/data"
LLAMA = pathlib.Path(os.environ.get("MCC_LLAMA_SRC", os.path.expanduser("~/.cache/mcc/llama.cpp")))
MODELS = pathlib.Path(os.environ.get("MCC_MODELS", os.path.expanduser("~/.cache/mcc/models")))
SEP = "\n__mcc_case__\n"

VOCABS = {
    "smollm2": MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf",
    "llama-bpe": LLAMA / "models/ggml-vocab-llama-bpe.gguf",
    "qwen2": LLAMA / "models/ggml-vocab-qwen2.gguf",
    "llama-spm": LLAMA / "models/ggml-vocab-llama-spm.gguf",
}

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done it; she'd say it's OK. YOU'LL SEE, WE'RE DONE, I'D KNOW.",
    "Äpfel, Öl und Übermaß: Straße, groß, Fußgängerübergänge.",
    "Ça va? L'été dernier, nous étions à l'hôtel près de la forêt.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Τάχιστη αλώπηξ βαφής ψημένη γη, δρασκελίζει υπέρ νωθρού κυνός.",
    "我能吞下玻璃而不伤身体。今天天气很好，我们去公园散步吧！",
    "私はガラスを食べられます。それは私を傷つけません。カタカナ、ひらがな、漢字。",
    "나는 유리를 먹을 수 있어요. 그래도 아프지 않아요. 안녕하세요!",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني. مرحبا بالعالم",
    "אני יכול לאכול זכוכית וזה לא מזיק לי. שלום עולם",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती. नमस्ते दुनिया",
    "ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ สวัสดีชาวโลก",
    "Tôi có thể ăn thủy tinh mà không hại gì. Xin chào thế giới!",
    "Mogę jeść szkło i mi nie szkodzi. Zażółć gęślą jaźń.",
    "Pchnąć w tę łódź jeża lub ośm skrzyń fig. ĄĆĘŁŃÓŚŹŻ",
    "ᚠᛇᚻ᛫ᛒᛦᚦ᛫ᚠᚱᚩᚠᚢᚱ᛫ᚠᛁᚱᚪ᛫ᚷᛖᚻᚹᛦᛚᚳᚢᛗ",
    "Emoji: 🦙🦙 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪🇯🇵 ❤️ ✅ 🤖💬 😀😃😄😁",
    "Math: ∀x∈ℝ, x²≥0; ∑ᵢ aᵢ = ½·π ≈ 1.5708 ± 0.0001 → ∞; 10⁻³ m³",
    "Numbers: 0 1 12 123 1234 12345 123456 3.14159 1,000,000 2024-06-01 ١٢٣٤ ۱۲۳ ０１２３ Ⅻ ⅷ ①②③",
    "Combining: e\u0301 a\u0300 n\u0303 o\u0308 Z\u0335\u0321a\u0336\u031bl\u0337g\u0338o\u0334 \u0915\u094d\u0937",
    "Zero width: a\u200bb c\u200cd e\u200df \ufeffBOM \u2060joiner\u00adsoft",
    "Spaces:\u00a0nbsp\u2009thin\u3000ideographic\u2003em\u202fnarrow\u205fmath\u1680ogham\u0085nel",
]

CODE = [
    'fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}\n',
    "def f(x):\n\tif x <= 0:\n\t\treturn []\n\treturn [i ** 2 for i in range(x)]  # squares\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\r\n",
    '{"name": "mcc", "version": [0, 1, 0], "ok": true, "nested": {"a": null, "b": -1.5e-3}}',
    "<html>\n  <body class=\"x\">\n    <p>Hello &amp; welcome</p><br/>\n  </body>\n</html>\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "$ cat /etc/hosts | grep -v '^#' && echo \"done\" || exit 1 >> /tmp/log 2>&1",
    "x+=1; y-=2; z*=3; a<<=4; b>>=5; c^=~d|e&f; g=h!=i==j; k=>l; m->n; o::p; q...r",
    "    indented    with    many     spaces     \n\n\n\t\t\t\n   \n",
    "trailing spaces    \nand tabs\t\t\nCRLF line\r\nonly CR\rend",
]

SPECIAL = [
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|endoftext|><|endoftext|> <|im_end|>x<|im_start|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<s> hello </s><unk> <s>[INST] x [/INST]",
    "<|im_start <|im_end| |im_end|> <<|im_end|>> <|<|im_start|>|>",
    "<repo_name>mcc<file_sep>src/main.rs<filename>a.py<gh_stars>10",
]

# codepoint ranges for random strings: letters, marks, numbers, symbols, spaces
RANGES = [
    (0x20, 0x7E), (0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
    (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF),
    (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20CF), (0x2100, 0x218F), (0x2190, 0x22FF),
    (0x2460, 0x24FF), (0x2500, 0x257F), (0x3000, 0x303F), (0x3040, 0x30FF), (0x4E00, 0x4EFF),
    (0xAC00, 0xACFF), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF),
    (0x1D400, 0x1D4FF), (0x10FFF0, 0x10FFFD), (0xE000, 0xE0FF),
]
WS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u3000", "    ", "\n   \n"]


def random_text(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.55:
            lo, hi = rng.choice(RANGES)
            cps = [rng.randint(lo, hi) for _ in range(rng.randint(1, 8))]
            out.append("".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF))
        elif r < 0.75:
            out.append(rng.choice(WS))
        elif r < 0.85:
            out.append(rng.choice(["'s", "'T", "'re", "'VE", "'m", "'ll", "'D", "'", "''", "'x"]))
        else:
            out.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
    return "".join(out)


def build_cases() -> list[str]:
    rng = random.Random(20240601)
    cases = []
    cases += SENTENCES + CODE + SPECIAL
    # mixtures of the above with random joints
    pool = SENTENCES + CODE + SPECIAL
    for _ in range(110):
        parts = rng.sample(pool, rng.randint(2, 4))
        cases.append(rng.choice(WS).join(parts))
    for _ in range(70):
        cases.append(random_text(rng, rng.randint(10, 60)))
    # edge shapes: leading/trailing whitespace, only whitespace, long runs
    cases += [" ", "  ", "\n", " \n ", "\t\t", "a" * 300, " " * 200 + "x", "=" * 150, "1" * 100,
              "🦙" * 50, "\u0301" * 20, "x" + "\u200b" * 10, "'" * 30 + "s"]
    return [c for c in cases if SEP.strip() not in c]


def fnv1a64(ids: list[int]) -> int:
    h = 0xCBF29CE484222325
    for b in b"".join(i.to_bytes(4, "little") for i in ids):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def batch_tool() -> pathlib.Path:
    """Compile scripts/tokenizer_golden_batch.cpp against the llama.cpp build."""
    out = pathlib.Path(tempfile.gettempdir()) / "mcc_tokenizer_golden_batch"
    subprocess.run(["g++", "-O1", "-std=c++17", str(ROOT / "scripts/tokenizer_golden_batch.cpp"),
                    f"-I{LLAMA}/include", f"-I{LLAMA}/ggml/include", f"-L{LLAMA}/build/bin",
                    f"-Wl,-rpath,{LLAMA}/build/bin", "-lllama", "-lggml", "-lggml-base", "-o", str(out)],
                   check=True)
    return out


def main() -> None:
    tool = batch_tool()
    cases = build_cases()
    DATA.mkdir(parents=True, exist_ok=True)
    cases_path = DATA / "tokenizer_cases.txt"
    cases_path.write_bytes(SEP.join(cases).encode())
    print(f"{len(cases)} cases, {cases_path.stat().st_size} bytes")
    for name, vocab in VOCABS.items():
        out = subprocess.run([str(tool), str(vocab), str(cases_path), SEP],
                             check=True, capture_output=True).stdout
        assert out.count(b"\n") == len(cases), (name, out.count(b"\n"), len(cases))
        if name == "smollm2":
            (DATA / f"tokenizer_{name}.ids").write_bytes(out)
        else:
            lines = []
            for line in out.decode().splitlines():
                modes = [[int(x) for x in part.split()] for part in line.split("|")]
                lines.append(" ".join(f"{fnv1a64(ids):016x}" for ids in modes))
            (DATA / f"tokenizer_{name}.digest").write_text("\n".join(lines) + "\n")
        print(f"{name}: {len(out)} bytes of ids")


if __name__ == "__main__":
    main()
