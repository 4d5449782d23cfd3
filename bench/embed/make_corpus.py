#!/usr/bin/env python3
"""Writes spec/fixtures/embed_corpus.txt: the texts the embedding fixture is
recorded on, one per line (deterministic). The tokenizer corpus of the
llama.cpp agreement test, then sentences of many kinds and scripts, Unicode
edge cases (controls, zero-width and format characters, compatibility forms,
combining marks, emoji sequences), a word too long for WordPiece, literal
special tokens, and long texts that the model's 256-token limit cuts."""
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "How do I reset my password?",
    "What is the capital of Australia?", "Is it safe to eat raw cookie dough?",
    "The stock market fell 3% on Tuesday after the central bank raised rates.",
    "I absolutely loved this product!!! Would buy again 10/10", "Terrible service. Never again.",
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)", "SELECT * FROM users WHERE id = 42;",
    "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }", "<div class=\"main\">Hello</div>",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG", "tHiS iS mIxEd CaSe TeXt", "wait... what?!?! no way!!!",
    "Le château est magnifique, n'est-ce pas ? Où est la bibliothèque ?",
    "Die Größe des Gebäudes überrascht mich; äußerst schön.", "¿Dónde está la estación? ¡Qué día más bonito!",
    "A conexão foi interrompida às três horas da manhã.", "Tiếng Việt có nhiều dấu: ă â ê ô ơ ư đ.",
    "Ελληνικά: η τελική σίγμα ς και ΣΟΦΟΣ.", "İstanbul, Ankara, IŞIK ve ışık.", "Čeština: příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Polski: Zażółć gęślą jaźń.", "Română: șase țări", "日本語の文章です。東京は大きな都市です。",
    "カタカナとひらがなとKanjiが混ざっています", "한국어 문장입니다. 서울은 대한민국의 수도입니다.",
    "中文句子：机器学习是人工智能的一个分支。", "繁體中文：臺灣的夜市很有名。", "混合 mixed 文本 text 123",
    "Emoji: 😀 😂 🥲 😍 🤔 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 🇯🇵 ❤️ ✨", "I ❤ NY 🗽 and ☕ at 7am ⏰",
    "Math: ∀x ∈ ℝ, x² ≥ 0; ∑_{i=1}^{n} i = n(n+1)/2", "Currency: $5, €10, £3.50, ¥1000, ₹250, ₿0.01",
    "Fullwidth: ＡＢＣ ａｂｃ １２３ ！？", "Ligatures: ﬁne ﬂow ﬀ; roman Ⅻ; ℌ ℍ ℕ", "Superscripts x² y³ H₂O",
    "zero\u200bwidth\u200bspace and soft\u00adhyphen and word\u2060joiner", "bell\x07 and escape\x1b characters and DEL\x7f",
    "non\u00a0breaking\u00a0space and ideographic\u3000space and thin\u2009space",
    "Combining: e\u0301 a\u0308 n\u0303 o\u0302 u\u0300 and stacked a\u0301\u0302\u0303",
    "Precomposed vs decomposed: \u00e9 e\u0301 \u00c5 A\u030a", "Hangul jamo: \u1100\u1161 \u110b\u1165",
    "Arabic with diacritics: مُحَمَّد and Persian: سلام دنیا", "Hebrew: שָׁלוֹם and Yiddish: שלום עליכם",
    "Hindi: मैं हिंदी बोलता हूँ।", "Tamil: வணக்கம் உலகம்", "Georgian: გამარჯობა", "Armenian: Բարեւ աշխարհ",
    "Ethiopic: ሰላም ልዑል", "Khmer: សួស្តី", "Mongolian: Сайн байна уу", "Private use: \ue000\ue001 end",
    "Unassigned-ish: \U000e0001 tag char and \U0001f9ff nazar amulet", "Surrogate-free astral: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕓𝕠𝕝𝕕 🜁",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 120 + " short words after a very long one", "x" * 99 + " " + "y" * 100 + " " + "z" * 101,
    "Special tokens in text: [SEP] [CLS] [MASK] [PAD] [UNK] and lowercase [sep] [cls]",
    "brackets [not special] and [[double]] and [SEP][SEP]", "email me at someone@example.com or call +1-800-555-0199",
    "https://example.com/path?query=1&lang=en#frag", "#hashtag @mention $TICKER r/subreddit",
    "C++ and C# and F# are languages; so is R.", "3.14159265358979323846264338327950288419716939937510",
    "1,234,567.89 and 1.234.567,89 and 1 234 567", "tab\there and newline-less line\r carriage", "   ", "",
    "a", "A.", "?", "...", "—–-", "«quotes» „German“ “curly” ‘single’", "The year 1999 vs. 2024 vs. '24",
    "O'Reilly's rock 'n' roll isn't ain't y'all'd've", "naïve café coöperate façade jalapeño piñata",
    "ÀÁÂÃÄÅ àáâãäå ÈÉÊË èéêë ÌÍÎÏ ìíîï ÒÓÔÕÖ òóôõö ÙÚÛÜ ùúûü Ýý ÿ Ññ Çç",
    "ǅungla ǈ ǋ titlecase digraphs and ẞ capital sharp s", "Ѐ Ѝ ѐ ѝ Cyrillic with grave", "ǰ ẖ ẗ ẘ ẙ ẚ special lowercase",
]

WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact be have do say get make go know take see come think look "
         "want give use find tell ask work seem feel try leave call good new first last long great little own other "
         "old right big high different small large next early young important few public bad same able").split()


def long_text(rng, n_words, extra=""):
    out = []
    for i in range(n_words):
        w = rng.choice(WORDS)
        if i % 13 == 0:
            w = w.capitalize()
        out.append(w)
        if i % 11 == 10:
            out[-1] += rng.choice([",", ".", ";", "!", "?"])
    return extra + " ".join(out)


def main():
    rng = random.Random(13)
    with open(os.path.join(ROOT, "spec", "fixtures", "tokenizer_corpus.txt"), encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f]
    texts += SENTENCES
    # combinations: pairs of sentences, questions to statements, every script next to emoji
    for i in range(60):
        a, b = rng.sample(SENTENCES[:60], 2)
        texts.append(f"{a} {b}" if i % 3 else f"{a.lower()} — {b.upper()}")
    for n in (200, 240, 260, 300, 500, 1000, 2000):
        texts.append(long_text(rng, n))
    texts.append(long_text(rng, 400, "日本語と中文の長い文章 " * 40))
    texts.append("😀 " * 300)
    texts.append("naïve café " * 200)
    texts = [t.replace("\n", " ") for t in texts]
    with open(os.path.join(ROOT, "spec", "fixtures", "embed_corpus.txt"), "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            f.write(t + "\n")
    print(f"{len(texts)} texts")


if __name__ == "__main__":
    main()
