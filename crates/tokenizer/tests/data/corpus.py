"""The tokenizer test corpus: >= 2,000 varied strings, generated deterministically.

Imported by regen_tokenize.py; `python3 corpus.py` prints how many strings it makes.
"""
import random

SPECIAL_LOOKALIKES = [
    "<|im_start|>", "<|im_end|>", "<|im_start", "im_start|>", "<|im_start|>user\nHello!<|im_end|>\n",
    "<|endoftext|>", "<|endoftext", "<reponame>", "<repo_name>", "<file_sep>", "<jupyter_code>x=1",
    "<|eot_id|>", "<|eot_id|", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>user<|end_header_id|>\n\n",
    "<|eom_id|>", "<|python_tag|>", "<|reserved_special_token_0|>", "<|reserved_special_token_247|>",
    "<|reserved_special_token_248|>", "<|reserved_special_token_12|>text", "<|finetune_right_pad_id|>",
    "<<|im_start|>>", "<|im_start|<|im_end|>", "<|im_end|><|im_end|>", "< |im_start| >", "<|IM_START|>",
    "<|eot_id|><|eot_id|>", "a<|eot_id|>b", " <|begin_of_text|> ", "<|<|im_start|>|>", "<s>", "</s>", "<unk>",
    "<|im_start|><|im_start|>system", "text<|im_end|>more text", "<|endoftext|><|im_start|>",
]

FIXED = [
    "", " ", "  ", "   ", "\n", "\n\n", "\r\n", "\r\n\r\n", "\t", "\t\t", " \n", "\n ", " \t\n", "a ", "a  ", "a   ",
    " a", "  a", "   a", "a\n", "a \n", "a  \n b", "hello world", "Hello World", "HELLO WORLD", "hElLo wOrLd",
    "it's", "It's", "IT'S", "'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'d",
    "'D", "they'll", "THEY'LL", "we're", "We'Re", "I'd", "I'D", "don't", "DON'T", "y'all", "'ſ", "it'ſ", "'Ll", "''s",
    "'", "''", "' s", "'s'", "rock 'n' roll", "O'Neil's", "l'été", "d'Artagnan",
    "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "-42", "+7", "1e10", "0x1F", "2024-01-31",
    "12:30:45", "v1.2.3", "٣٤٥", "١٢٣٤٥٦٧", "①②③", "Ⅻ", "½", "¾", "１２３", "๓๔๕", "१२३", "𝟙𝟚𝟛", "²³",
    "a1b2c3", "abc123def", "123abc", " 123", "  123", "$100.00", "100%", "#1", "№5",
    "😀", "😀😀😀", "👍🏽", "👩‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇩🇪", "1️⃣", "❤️", "☺︎", "👨🏿‍💻", "🧑‍🤝‍🧑", " 😀", "a😀b",
    "\u00a0", "a\u00a0b", "\u3000", "a\u3000b", "\u2009", "a\u2009b", "\u200b", "a\u200bb", "\u0085", "a\u0085b",
    "\u2028", "\u2029", "\u202f", "\u205f", "\u1680", "\x0b", "\x0c", "a\x0bb", "\u200d", "\ufeff", "\ufeffhello",
    "\x01", "\x1b[31mred\x1b[0m", "\x7f", "\u0080", "\u009f", "\ue000", "\U000f0000", "\U000e0001", "\u0378",
    "\U0001fae9", "\uffff", "\U0010ffff",
    "café", "cafe\u0301", "naïve", "Ångström", "İstanbul", "ß", "ẞ", "ǅ", "ﬁ", "Straße",
    "a" * 300, "ab" * 200, "x" * 1000, "1" * 200, " " * 100, "\n" * 50, "\t" * 40, "😀" * 100, "!" * 120,
    "Pneumonoultramicroscopicsilicovolcanoconiosis", "supercalifragilisticexpialidocious" * 10,
    "https://example.com/path?query=1&b=2#frag", "user@example.com", "C:\\Windows\\System32", "/usr/local/bin/",
    "trailing spaces   ", "trailing tab\t", "trailing newline\n", "  leading and trailing  ",
    "line1\nline2\r\nline3\rline4", "tabs\tand\tspaces  mixed \t \n",
]

SCRIPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "¿Dónde está la biblioteca? ¡Allí!",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "我能吞下玻璃而不伤身体。",
    "私はガラスを食べられます。それは私を傷つけません。",
    "나는 유리를 먹을 수 있어요. 그래도 아프지 않아요.",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني.",
    "אני יכול לאכול זכוכית וזה לא מזיק לי.",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती.",
    "ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ",
    "მინას ვჭამ და არა მტკივა.",
    "Կրնամ ապակի ուտել և ինծի անհանգիստ չըներ։",
    "நான் கண்ணாடி சாப்பிடுவேன், அதனால் எனக்கு ஒரு கேடும் வராது.",
    "ብርጭቆ መብላት እችላለሁ፣ እሱም አይጎዳኝም።",
    "Tôi có thể ăn thủy tinh mà không hại gì.",
    "Mogę jeść szkło i mi nie szkodzi.",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
    "ᚠᛇᚻ᛫ᛒᛦᚦ᛫ᚠᚱᚩᚠᚢᚱ᛫ᚠᛁᚱᚪ᛫ᚷᛖᚻᚹᛦᛚᚳᚢᛗ",
    "𝐇𝐞𝐥𝐥𝐨 𝕎𝕠𝕣𝕝𝕕",
    "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ",
    "Ꭰꮿ ᏣᎳᎩ",
    "ᠮᠣᠩᠭᠣᠯ",
]

CODE = [
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
    "<div class=\"x\">&amp; &lt;tag&gt;</div>",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "x = [i for i in range(10) if i % 2 == 0]  # comment",
    "if (a && b || !c) { return a->b[c]; }",
    "    indented\n        more\n\t\ttabs\n",
    "import numpy as np\n\n\nclass Foo:\n    pass\n",
    "#include <stdio.h>\nint main(void){printf(\"%d\\n\",1);}",
    "regex: ^[a-zA-Z0-9_]+@[a-z]+\\.(com|org)$",
    "$ cargo build --release 2>&1 | tee log.txt",
    "a+=1;b-=2;c*=3;d/=4;e%=5;f**=6;g//=7",
    "let s = r#\"raw \"string\"\"#;",
    "```python\nprint('hi')\n```",
    "---\ntitle: \"Doc\"\ntags: [a, b]\n---",
    "| col1 | col2 |\n|------|------|\n| 1    | 2    |",
    "=SUM(A1:A10)/COUNT(B2:B5)",
    "λx.λy.x y ∀ε>0 ∃δ>0 ∑∫∂√∞≠≤≥",
]

WORDS = ("the of and to in is you that it he was for on are as with his they I at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up other "
         "about out many then them these so some her would make like him into time has look two more write go see "
         "number no way could people my than first water been call who oil its now find long down day did get come "
         "made may part Hello World Python Rust LLaMA tokenizer SmolLM GPT").split()

FRAGMENTS = (WORDS + [s.split()[0] for s in SCRIPTS] + ["'s", "'t", "'LL", "n't", "123", "4567", "3.5", "😀", "👍🏽",
             "👩‍💻", "🇯🇵", "—", "…", "!!", "?!", "...", "()", "[]", "{}", "<", ">", "<|", "|>", "_", "__init__",
             "@", "#", "$", "%", "^", "&", "*", "é", "ñ", "ü", "中文", "日本語", "한국어", "العربية", "עברית",
             "हिन्दी", "ไทย", "Ελληνικά", "Русский", "\u00a0", "\u3000", "½", "٣", "①"] + SPECIAL_LOOKALIKES)

SEPARATORS = [" ", " ", " ", " ", "", "", "  ", "   ", "\n", "\n\n", "\r\n", "\t", " \n", "\n ", "\t ", ". ", ", ",
              "! ", "? ", ": ", "; ", " - ", "/", "\u00a0", "\u3000", "\u2009", "\r", "\x0b", "\u0085"]


def random_string(rng):
    n = rng.choice([1, 2, 3, 4, 6, 8, 12, 20, 40])
    out = []
    for i in range(n):
        frag = rng.choice(FRAGMENTS)
        r = rng.random()
        if r < 0.1:
            frag = frag.upper()
        elif r < 0.15:
            frag = frag.capitalize()
        elif r < 0.2:
            frag = "".join(c.upper() if rng.random() < 0.5 else c for c in frag)
        out.append(frag)
        if i + 1 < n:
            out.append(rng.choice(SEPARATORS))
    if rng.random() < 0.15:
        out.append(rng.choice([" ", "  ", "\n", " \n", "\t", "   ", "\r\n"]))
    if rng.random() < 0.1:
        out.insert(0, rng.choice([" ", "  ", "\n", "\t"]))
    return "".join(out)


def random_chars(rng):
    """Random code points from many blocks (no surrogates, no NUL)."""
    blocks = [(0x20, 0x7e), (0x01, 0x1f), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff),
              (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f), (0x2070, 0x22ff),
              (0x3000, 0x30ff), (0x4e00, 0x4fff), (0xac00, 0xad00), (0xfe00, 0xfe0f), (0xff00, 0xffef),
              (0x1f300, 0x1f6ff), (0x1f900, 0x1f9ff), (0x10000, 0x100ff), (0xe0000, 0xe007f)]
    n = rng.randint(1, 30)
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(blocks)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def random_digits(rng):
    parts = []
    for _ in range(rng.randint(1, 5)):
        parts.append(str(rng.randint(0, 10 ** rng.randint(1, 25))))
        parts.append(rng.choice(["", " ", ",", ".", "-", "  ", "\n", "x", "abc", "٫"]))
    return "".join(parts)


def random_whitespace(rng):
    pool = [" ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2009", "\x0b", "\x0c", "\u0085", "a", "b", ".", "1"]
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 25)))


def corpus():
    rng = random.Random(20261127)
    strings = list(FIXED) + list(SPECIAL_LOOKALIKES) + list(SCRIPTS) + list(CODE)
    for s in SCRIPTS + CODE:
        strings.append(s.upper())
        strings.append(" " + s + "  ")
    while len(strings) < 1500:
        strings.append(random_string(rng))
    for _ in range(200):
        strings.append(random_chars(rng))
    for _ in range(150):
        strings.append(random_digits(rng))
    for _ in range(150):
        strings.append(random_whitespace(rng))
    for _ in range(100):
        a, b = rng.choice(SPECIAL_LOOKALIKES), random_string(rng)
        strings.append(rng.choice([a + b, b + a, b + a + b, a + a]))
    seen, out = set(), []
    for s in strings:
        if "\x00" in s or s in seen:
            continue
        seen.add(s)
        out.append(s)
    return out


if __name__ == "__main__":
    c = corpus()
    print(len(c), sum(len(s) for s in c))
