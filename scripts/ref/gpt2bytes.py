"""GPT-2's byte-level BPE alphabet, shared by the fixture scripts (the C side is engine/tokenizer.c)."""


def bytes_to_unicode():
    """byte -> printable character: printable Latin-1 bytes stand for themselves, the other 68 take U+0100..
    in byte order."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(0x100 + extra)
            extra += 1
    return out
