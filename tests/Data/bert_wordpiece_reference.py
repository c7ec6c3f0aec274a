#!/usr/bin/python3
"""Independent reference for BERT WordPiece ids, as transformers' slow BertTokenizer computes them.

Written from a reading of transformers' tokenization_bert.py (BasicTokenizer, WordpieceTokenizer) and
PreTrainedTokenizer.tokenize in tokenization_utils.py, with the standard library only (unicodedata), so the C#
tokenizer is checked against Python's own Unicode tables and string methods rather than against itself.

Usage: bert_wordpiece_reference.py VOCAB_TXT [--cased] [--strip-accents true|false|none] [--no-chinese-chars]
Reads a JSON array of texts on stdin; writes a JSON array with each text's ids (no [CLS]/[SEP]) on stdout.
Usage: bert_wordpiece_reference.py --unassigned
Writes {"unicode": version, "unassigned": [code points of the basic plane that this Python's tables leave unassigned]}.
"""
import json
import sys
import unicodedata

SPECIALS = ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"]
CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
ASCII_PUNCT = set(range(33, 48)) | set(range(58, 65)) | set(range(91, 97)) | set(range(123, 127))


def is_cjk(ch):
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def is_punct(ch):
    return ord(ch) in ASCII_PUNCT or unicodedata.category(ch)[0] == "P"


def clean(text):
    out = []
    for ch in text:
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif ord(ch) in (0, 0xFFFD) or unicodedata.category(ch)[0] == "C":
            continue
        else:
            out.append(ch)
    return "".join(out)


def strip_marks(word):
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def punct_split(word):
    pieces, current = [], ""
    for ch in word:
        if is_punct(ch):
            if current:
                pieces.append(current)
                current = ""
            pieces.append(ch)
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def basic(text, lower, strip, cjk):
    text = clean(text)
    if cjk:
        text = "".join(" " + c + " " if is_cjk(c) else c for c in text)
    words = []
    for word in unicodedata.normalize("NFC", text).split():
        if lower:
            word = word.lower()
        if strip:
            word = strip_marks(word)
        words.extend(punct_split(word))
    return " ".join(words).split()


def wordpiece(word, vocab, unk):
    if len(word) > 100:
        return [unk]
    ids, start = [], 0
    while start < len(word):
        found = None
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                found = (vocab[piece], end)
                break
        if found is None:
            return [unk]
        ids.append(found[0])
        start = found[1]
    return ids


def split_specials(text):
    """The text's runs between the special tokens (left-most longest match), and the tokens themselves."""
    parts, i, run = [], 0, ""
    while i < len(text):
        match = max((s for s in SPECIALS if text.startswith(s, i)), key=len, default=None)
        if match is None:
            run += text[i]
            i += 1
        else:
            parts.append((run, False))
            parts.append((match, True))
            run, i = "", i + len(match)
    parts.append((run, False))
    return parts


def encode(text, vocab, lower, strip, cjk):
    if lower:
        # PreTrainedTokenizer.tokenize lower-cases outside the special tokens one character at a time (its regex
        # matches single characters), so no context-dependent mapping such as a final sigma.
        text = "".join(seg if special else "".join(c.lower() for c in seg) for seg, special in split_specials(text))
    ids = []
    for segment, special in split_specials(text):
        if special:
            ids.append(vocab[segment])
            continue
        for word in basic(segment, lower, strip, cjk):
            ids.extend(wordpiece(word, vocab, vocab["[UNK]"]))
    return ids


def main():
    args = sys.argv[1:]
    if args == ["--unassigned"]:
        cn = [cp for cp in range(0x10000) if unicodedata.category(chr(cp)) == "Cn"]
        json.dump({"unicode": unicodedata.unidata_version, "unassigned": cn}, sys.stdout)
        return
    vocab_path = args.pop(0)
    lower, strip, cjk = True, None, True
    while args:
        flag = args.pop(0)
        if flag == "--cased":
            lower = False
        elif flag == "--strip-accents":
            strip = {"true": True, "false": False, "none": None}[args.pop(0)]
        elif flag == "--no-chinese-chars":
            cjk = False
        else:
            sys.exit(f"unknown argument {flag!r}; expected --cased, --strip-accents true|false|none or --no-chinese-chars")
    if strip is None:
        strip = lower
    with open(vocab_path, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    texts = json.load(sys.stdin)
    json.dump([encode(t, vocab, lower, strip, cjk) for t in texts], sys.stdout)


if __name__ == "__main__":
    main()
