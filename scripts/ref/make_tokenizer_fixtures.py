#!/usr/bin/env python3
"""Build tests/fixtures/tokenizer.json and tests/fixtures/chat_templates.json from the default model.

    python3 scripts/ref/make_tokenizer_fixtures.py [--model FILE] [--out DIR]

Reference for token ids: the HF `tokenizers` package, configured like SmolLM2's tokenizer.json and fed the
GGUF's own vocabulary and merges (read with the `gguf` package):
    BPE(vocab, merges), pre_tokenizer = Sequence[Digits(individual_digits=True),
    ByteLevel(add_prefix_space=False, use_regex=True)], ByteLevel decoder, the control tokens added as special
    AddedTokens.  parse_special = false is `encode_special_tokens = True` (special texts are plain text).
Cross-check: llama.cpp through llama-cpp-python (`Llama(model, vocab_only=True).tokenize(..., special=...)`),
when it is importable.  Every disagreement between the two references is printed and stored in the fixture
("crosscheck" -> "disagreements"); the fixture's ids are always the HF ones.

Last cross-check (tokenizers 0.23.3, llama-cpp-python 0.3.36): 1271 comparisons (348 strings with the
model's "smollm" pre-tokenizer + 3 x 329 with the variants), 0 disagreements.  Known differences between the
two references that these strings cannot show, and what the C tokenizer does:
  - llama.cpp matches user-defined tokens (type 4) even with special=False; HF matches non-special added
    tokens always too.  The C side follows the project's rule (only with parse_special).  SmolLM2 has no
    user-defined tokens.
  - a byte whose token is missing from the vocabulary (SmolLM2 lacks 21) is dropped by both, but HF drops it
    before merging (its neighbours may merge) and llama.cpp after.  The C side does what HF does.
  - llama.cpp knows the GPT-2 pre-tokenizer as "gpt-2"; "gpt2" is unknown to it.  The C side accepts both.
  - the Llama-3/Qwen2 regexes start with (?i:'s|'t|...) in HF; llama.cpp (and the C side) spell the case
    folding out ('[sS]...), which differs only for Unicode folds such as U+017F (tested: "it'ſ").

"variants" holds the same vocabulary tokenised with the other supported pre-tokenizers (tokenizer.ggml.pre
= gpt-2, llama-bpe, qwen2), each built in HF from its tokenizer.json pre-tokenizer (a Split on the original
regex, isolated, then ByteLevel without regex; Llama-3 with ignore_merges).  The C test rebuilds the GGUF
metadata in memory with the other pre name and compares.

chat_templates.json: the GGUF's tokenizer.chat_template rendered with jinja2 (as transformers renders it:
sandboxed, trim_blocks, lstrip_blocks) for several conversations, plus two templates of other families
(written here in the style of Qwen2.5 and Llama-3) that the C side must recognise and render the same way.

Everything is deterministic: no randomness, sorted keys, fixed order.
"""
import argparse
import json
import os
import sys
import tempfile

import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2bytes import bytes_to_unicode  # noqa: E402
import jinja2
import jinja2.sandbox
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_MODEL = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
    "dsachat/models/SmolLM2-135M-Instruct.Q4_1.gguf")

RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
RE_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
RE_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# ---- reading the GGUF -------------------------------------------------------------------------------------

def field_str(f):
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def field_int(f):
    return int(f.parts[f.data[0]][0])


def read_gguf(path):
    r = gguf.GGUFReader(path)
    fl = r.fields
    toks = fl["tokenizer.ggml.tokens"]
    merges = fl["tokenizer.ggml.merges"]
    types = fl["tokenizer.ggml.token_type"]
    return {
        "tokens": [bytes(toks.parts[i]).decode("utf-8") for i in toks.data],
        "types": [int(types.parts[i][0]) for i in types.data],
        "merges": [bytes(merges.parts[i]).decode("utf-8") for i in merges.data],
        "pre": field_str(fl["tokenizer.ggml.pre"]),
        "bos": field_int(fl["tokenizer.ggml.bos_token_id"]),
        "eos": field_int(fl["tokenizer.ggml.eos_token_id"]),
        "chat_template": field_str(fl["tokenizer.chat_template"]),
    }


def missing_bytes(g):
    vocab = set(g["tokens"])
    return {b for b, c in bytes_to_unicode().items() if c not in vocab}


def decode_bytes(g, ids):
    inv = {c: b for b, c in bytes_to_unicode().items()}
    out = bytearray()
    for i in ids:
        t = g["tokens"][i]
        out += t.encode("utf-8") if g["types"][i] == 3 else bytes(inv[c] for c in t)
    return bytes(out)


# ---- the HF reference ---------------------------------------------------------------------------------------

def hf_tokenizer(g, pre):
    vocab = {}
    for i, t in enumerate(g["tokens"]):
        vocab[t] = i  # later duplicates win, as in llama.cpp (SmolLM2 has none)
    merges = [tuple(m.split(" ", 1)) for m in g["merges"]]
    if pre == "smollm":
        model = models.BPE(vocab, merges)
        pt = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre == "gpt-2":
        model = models.BPE(vocab, merges)
        pt = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        regex = {"llama-bpe": RE_LLAMA3, "qwen2": RE_QWEN2}[pre]
        model = models.BPE(vocab, merges, ignore_merges=(pre == "llama-bpe"))
        pt = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk = Tokenizer(model)
    tk.pre_tokenizer = pt
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
                           for t, ty in zip(g["tokens"], g["types"]) if ty == 3])
    return tk


def hf_encode(tk, text, special):
    tk.encode_special_tokens = not special
    return tk.encode(text, add_special_tokens=False).ids


# ---- the strings ------------------------------------------------------------------------------------------

def corpus():
    s = []
    # empty and whitespace only
    s += ["", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t  \n", "\u00a0", "\u3000", "\u2003 \u2003",
          " " * 17, "\n" * 9, " \t \t \n \r\n \u00a0\u2009"]
    # ASCII words and sentences
    s += ["Hello", "hello", "HELLO", " Hello", "Hello world", "Hello, world!", "The quick brown fox jumps over the "
          "lazy dog.", "a", "I", "ab", "to be or not to be", "What is the capital of France?",
          "supercalifragilisticexpialidocious", "antidisestablishmentarianism", "pneumonoultramicroscopic",
          "a b c d e f g", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "abababababababababab",
          "CamelCaseIdentifierName", "snake_case_identifier_name", "SCREAMING_SNAKE_CASE", "kebab-case-name",
          "e.g. i.e. etc. vs. Mr. Mrs. Dr.", "U.S.A.", "hello\tworld", "hello\nworld", "hello\r\nworld",
          "hello  world", "hello   world", "hello    world", "  leading", "trailing  ", "  both  ",
          "line one\nline two\n\nline four\n", "tab\tseparated\tvalues\t1\t2\t3", "word\n\n\n\nword",
          "   \n   indented\n      more\n", "end with newline\n", " x", "x ", "x  y", "x \n y", "x\n\ny"]
    # digits and numbers
    s += ["0", "7", "42", "123", "1234", "12345", "123456789", "3.14159265358979", "1,000,000", "-273.15",
          "+1 (555) 010-9999", "2024-01-15T10:30:00Z", "0x7fffffff", "0b101010", "1e-10", "6.022e23",
          "99 bottles", "route 66", "a1b2c3", "v1.2.3-rc4", "IPv4 192.168.0.1", "12:34:56", "1st 2nd 3rd 4th",
          "3/4 cup", "50%", "$1,234.56", "€99,99", "¥1000", "½ ¾ ⅓", "²³¹", "①②③", "٠١٢٣٤٥٦٧٨٩", "१२३",
          "一二三", "Ⅻ Ⅳ", "31415926535897932384626433832795028841971693993751058209749445923078164062862"]
    # punctuation and symbols
    s += ["!", "?!", "...", "…", "---", "—", "–", "!!!???", "@#$%^&*()", "[]{}<>", "a+b=c", "x*y/z",
          "<<>>", "==", "!==", "->", "=>", "::", "/* */", "// comment", "#include", "~/path/to/file.txt",
          "https://example.com/a/b?c=d&e=f#g", "user@example.com", "\"quoted\"", "'single'", "`backtick`",
          "«guillemets»", "“curly”", "‘curly’", "(parenthetical)", "semi;colon", "a,b,c", "¡Hola!", "¿Qué?",
          "§ ¶ † ‡ • ©®™", "±×÷≠≤≥∞∑∏√∫", "←↑→↓↔", "░▒▓█", "♠♣♥♦", "\\n is not a newline", "\\\\", "||", "&&"]
    # contractions with various apostrophes and cases
    for w in ["s", "t", "re", "ve", "m", "ll", "d", "S", "T", "RE", "VE", "M", "LL", "D", "Re", "Ll"]:
        s.append("it'" + w)
    s += ["don't", "DON'T", "Don't", "I'm", "I'M", "you're", "YOU'RE", "we've", "they'll", "she'd",
          "it’s", "don’t", "I’m", "it`s", "it´s", "it's's", "'s", "'", "''", "'''", "rock 'n' roll",
          "'tis", "o'clock", "O'Reilly", "the dog's bone", "the dogs' bones", "he said 'hi'", "'ll 'd 've",
          "it'ſ", "it'K"]
    # source code
    s += ["int main(void) {\n    printf(\"hello\\n\");\n    return 0;\n}\n",
          "def f(x):\n    return x ** 2 + 1\n\nprint(f(3))\n",
          "for (let i = 0; i < n; i++) { sum += a[i]; }",
          "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}",
          "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
          "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done\n",
          "<div class=\"main\"><p>Hello &amp; welcome</p></div>",
          "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
          "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
          "public static void main(String[] args) throws IOException {}",
          "x = [i*i for i in range(10) if i % 2 == 0]",
          "    if (a && !b || c) {\n        return;\n    }",
          "template<typename T> std::vector<T> v;", "$x = @array[0]; # perl",
          "\tindented with tab\n\t\tdouble tab\n", "a\t=\t1", "//\t\ttabs in comment",
          "const re = /^[a-z]+$/i;", "let s = `template ${x}`;", "mov eax, [ebp+8]",
          "diff --git a/x.c b/x.c\n@@ -1,3 +1,4 @@\n-old\n+new\n", "key: value\nlist:\n  - a\n  - b\n",
          "\\begin{equation} E = mc^2 \\end{equation}", "| col1 | col2 |\n|------|------|\n| a    | b    |"]
    # CJK, other scripts, RTL
    s += ["你好，世界！", "我爱北京天安门", "日本語のテキストです。", "カタカナ ひらがな 漢字", "한국어 텍스트입니다",
          "안녕하세요", "中文English混合text", "Привет, мир!", "Съешь же ещё этих мягких французских булок",
          "Γειά σου Κόσμε", "Ελληνικά", "مرحبا بالعالم", "العربية ١٢٣", "שלום עולם", "עברית 123 English",
          "नमस्ते दुनिया", "हिन्दी", "สวัสดีชาวโลก", "ภาษาไทย", "Tiếng Việt có dấu", "Ελληνικά και English",
          "ქართული", "Հայերեն", "አማርኛ", "தமிழ்", "ಕನ್ನಡ", "বাংলা", "ᚠᚢᚦᚨᚱᚲ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝐁𝐨𝐥𝐝",
          "Ａｂｃ１２３", "\u202eright-to-left override\u202c", "a\u200bb\u200cc\u200dd", "\ufeffBOM"]
    # emoji, ZWJ sequences, flags, skin tones, variation selectors
    s += ["😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇩🇪🇯🇵", "🇺🇳", "❤️", "❤", "☕️", "✈︎",
          "🧑🏿‍💻 coding", "I ❤️ NY", "emoji: 🎉🎊🥳!", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "1️⃣2️⃣", "🫠🫡🫥", "🐍 python 🦀 rust"]
    # combining marks and normalisation forms
    s += ["é", "e\u0301", "café", "cafe\u0301", "naïve", "na\u0308ive", "Å", "A\u030a", "ñ", "n\u0303",
          "Z̴̧͉̈́a̸͎͌l̷̙̓g̶̱̈ó̵̘", "ﬁ ﬂ ﬀ", "ǅ ǈ ǋ", "ß ẞ", "İstanbul ı", "Ωmega Ω", "ḱṷḹ"]
    # control characters
    s += ["\x01\x02\x03", "a\x1bb", "\x7f", "bell\x07", "\x0b\x0c", "\x1c\x1d\x1e\x1f", "\x85", "\u2028\u2029"]
    # whitespace and letters at the edges of the Unicode tables (\s and \p{L} must agree with the reference)
    s += ["a\u180eb", "a\u1680b", "a\u205fb", "a\u202fb", "x\x0by", "x\x0cy", "a\u2060b", "a\u00adb",
          "a \u0300b", "x\u3000\u3000y", "Kawi \U00011f04\U00011f05", "\U0001e030\U0001e031",
          "\U00020000\U0002a6d6", "\U000e0041", "\uffff", "\U0010fffd"]
    # chat-template text, with and without special-token parsing (flag parse_special on the case)
    chat = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n",
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
            "text<|im_end|>more", "<|im_start|><|im_start|>", "<|im_start", "|im_start|>", "<|im_start|x",
            "<<|im_end|>>", " <|im_start|> ", "<repo_name>dsachat<file_sep>main.c", "<filename>a.py\n",
            "<jupyter_code>print(1)<jupyter_output>1", "<empty_output>", "<|IM_START|>", "<| im_start |>",
            "<|im_start|>assistant\n<|im_start|>\n\n<|im_end|>"]
    sp = [(c, True) for c in chat] + [(c, False) for c in chat]
    # long texts
    s += [" ".join(["lorem ipsum dolor sit amet"] * 40), "x" * 300, "=" * 100, "-_" * 64, " " * 100 + "x",
          "\n".join(str(i) for i in range(60)), "a" + "\u0301" * 40]
    cases = [(t, False) for t in s] + sp
    seen, out = set(), []
    for t, special in cases:
        if (t, special) not in seen:
            seen.add((t, special))
            out.append((t, special))
    return out


def long_text():
    """A prose + code text of about 2000 tokens (also used for timing outside the tests)."""
    para = ("Sparse attention keeps, for every query token, only the k keys that a small indexer scores "
            "highest; while the context is at most k tokens it is exactly dense attention. It's cheap: "
            "O(L*k) instead of O(L^2). ")
    code = ("static int add(int a, int b) {\n    return a + b; // 123 + 4567 = 4690\n}\n"
            "for i in range(10):\n\tprint(f\"{i:03d} → {i*i}\")\n")
    other = "日本語とEnglish、混在テキスト。Привет! 👍🏽 ¿Qué tal? "
    return ((para * 4 + code + other) * 6).strip()


# ---- llama.cpp cross-check ------------------------------------------------------------------------------------

def llama_cpp_reference(model):
    try:
        import llama_cpp
        from llama_cpp import Llama
    except Exception as e:  # noqa: BLE001 - any failure means "not available"
        print(f"llama-cpp-python not importable ({e}); no cross-check", file=sys.stderr)
        return None, None
    llm = Llama(model_path=model, vocab_only=True, verbose=False)
    return llm, getattr(llama_cpp, "__version__", "?")


def metadata_copy(src, dst, pre):
    """A tensor-less copy of src's metadata with tokenizer.ggml.pre replaced (for llama.cpp's vocab_only)."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch=field_str(r.fields["general.architecture"]))
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        t = f.types[0]
        if k == "tokenizer.ggml.pre":
            w.add_string(k, pre)
        elif t == gguf.GGUFValueType.ARRAY and f.types[1] == gguf.GGUFValueType.STRING:
            w.add_array(k, [bytes(f.parts[i]).decode("utf-8") for i in f.data])
        elif t == gguf.GGUFValueType.ARRAY:
            w.add_array(k, [int(f.parts[i][0]) for i in f.data])
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(k, field_str(f))
        else:
            w.add_key_value(k, f.parts[f.data[0]][0], t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def compare(label, llm, text, special, ids, disagreements):
    lids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
    if lids != ids:
        disagreements.append({"pre": label, "text": text, "special": special, "hf": ids, "llama_cpp": lids})
        print(f"DISAGREE {label} special={special} {text!r}\n  hf        {ids}\n  llama.cpp {lids}",
              file=sys.stderr)


# ---- chat templates ---------------------------------------------------------------------------------------

QWEN25_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

LLAMA3_STYLE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "Thanks"},
     {"role": "assistant", "content": "De rien."}],
    [{"role": "user", "content": "  padded  \n"}, {"role": "assistant", "content": "\n\tok \u00a0"}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "multi\nline\n\ncontent with <|im_end|> inside and 日本語 🎉"}],
    [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "ok"}],
]


def render(template, messages, add_generation_prompt, bos_token=""):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos_token, eos_token="")


def chat_fixture(g):
    templates = [
        ("gguf", g["chat_template"], "chatml",
         "You are a helpful AI assistant named SmolLM, trained by Hugging Face", True),
        ("qwen2.5-style", QWEN25_STYLE, "chatml",
         "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", False),
        # bos_token is rendered as "": the C side leaves BOS to the tokenizer (add_bos_token), like llama.cpp.
        ("llama3-style", LLAMA3_STYLE, "llama3", None, True),
    ]
    out = []
    for name, tmpl, kind, default_system, empty_ok in templates:
        cases = []
        convs = CONVERSATIONS + ([[]] if empty_ok else [])
        for msgs in convs:
            for agp in (False, True):
                cases.append({"messages": msgs, "add_generation_prompt": agp,
                              "rendered": render(tmpl, msgs, agp)})
        out.append({"name": name, "template": tmpl, "kind": kind, "default_system": default_system,
                    "cases": cases})
    unrecognised = [
        "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}",
        "{{ bos_token }}{% for message in messages %}[INST] {{ message['content'] }} [/INST]{% endfor %}",
        "",
    ]
    return {"generator": "scripts/ref/make_tokenizer_fixtures.py", "jinja2": jinja2.__version__,
            "templates": out, "unrecognised": unrecognised}


def dump_one_case_per_line(obj):
    """JSON with one case per line, so that a diff of the fixture shows which strings changed."""
    def line(v):
        return json.dumps(v, ensure_ascii=False, sort_keys=True)

    def cases(lst, indent):
        return "[\n" + ",\n".join(indent + line(c) for c in lst) + "\n" + indent[:-1] + "]"

    parts = []
    for k in sorted(obj):
        if k == "cases":
            parts.append(f' "cases": {cases(obj[k], "  ")}')
        elif k == "variants":
            vs = [f'  {line(name)}: {cases(obj[k][name], "   ")}' for name in sorted(obj[k])]
            parts.append(' "variants": {\n' + ",\n".join(vs) + "\n }")
        else:
            parts.append(f" {line(k)}: {line(obj[k])}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


# ---- main ------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.environ.get("DSA_MODEL") or DEFAULT_MODEL)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()

    g = read_gguf(args.model)
    assert g["pre"] == "smollm", g["pre"]
    tk = hf_tokenizer(g, "smollm")
    llm, lcp_version = llama_cpp_reference(args.model)

    missing = missing_bytes(g)
    print("bytes without a token: " + " ".join(f"{b:02x}" for b in sorted(missing)), file=sys.stderr)
    cases, disagreements = [], []
    strings = corpus() + [(long_text(), False)]
    for text, special in strings:
        ids = hf_encode(tk, text, special)
        # bytes without a token are dropped (HF and llama.cpp agree): the rest must come back
        raw = bytes(b for b in text.encode("utf-8") if b not in missing)
        assert tk.decode(ids, skip_special_tokens=False).encode("utf-8", "surrogateescape") == raw or \
            decode_bytes(g, ids) == raw, repr(text)
        if llm is not None:
            compare("smollm", llm, text, special, ids, disagreements)
        cases.append({"text": text, "special": special, "ids": ids})
    compared = len(cases) if llm else 0

    variants = {}
    for pre in ("gpt-2", "llama-bpe", "qwen2"):
        vt = hf_tokenizer(g, pre)
        variants[pre] = [{"text": t, "special": sp, "ids": hf_encode(vt, t, sp)} for t, sp in strings
                         if not sp]
        if llm is None:
            continue
        from llama_cpp import Llama
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "vocab.gguf")
            metadata_copy(args.model, path, pre)
            vl = Llama(model_path=path, vocab_only=True, verbose=False)
            for c in variants[pre]:
                compare(pre, vl, c["text"], False, c["ids"], disagreements)
            compared += len(variants[pre])
            del vl

    fixture = {
        "generator": "scripts/ref/make_tokenizer_fixtures.py",
        "reference": f"tokenizers {tokenizers.__version__}",
        "model": os.path.basename(args.model),
        "n_vocab": len(g["tokens"]), "n_merges": len(g["merges"]), "bos": g["bos"], "eos": g["eos"],
        "crosscheck": {"llama_cpp_python": lcp_version, "compared": compared,
                       "disagreements": disagreements},
        "cases": cases,
        "variants": variants,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as fp:
        fp.write(dump_one_case_per_line(fixture))
    with open(os.path.join(args.out, "chat_templates.json"), "w", encoding="utf-8") as fp:
        json.dump(chat_fixture(g), fp, ensure_ascii=False, indent=1, sort_keys=True)
        fp.write("\n")
    print(f"{len(cases)} strings ({sum(1 for c in cases if c['special'])} with parse_special), "
          f"{len(disagreements)} disagreements with llama.cpp"
          + ("" if llm else " (llama.cpp not available)"))


if __name__ == "__main__":
    main()
