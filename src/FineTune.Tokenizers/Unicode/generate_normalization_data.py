#!/usr/bin/env python3
"""Writes normalization.bin, the Unicode normalisation tables FineTune.Tokenizers embeds.

.NET's string.Normalize does nothing under InvariantGlobalization, which FineTune uses, so the
NFC/NFKC normalizers of tokenizer.json run on these tables. Source: Python's unicodedata
(its Unicode version is written into the file header). Hangul syllables are algorithmic and
not stored.

Layout (little-endian int32): magic 'FTUN', unicode version (major*10000+minor*100+patch),
then four sections, each a count followed by records:
  combining classes   : (code point, class)
  canonical (NFD)     : (code point, length, code points...)
  compatibility (NFKD): (code point, length, code points...)
  compositions        : (first, second, composite)
"""
import struct, sys, unicodedata
from pathlib import Path

def hangul(cp): return 0xAC00 <= cp <= 0xD7A3

def main():
    ccc, nfd, nfkd, comp = [], [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF: continue
        ch = chr(cp)
        c = unicodedata.combining(ch)
        if c: ccc.append((cp, c))
        if hangul(cp): continue
        d = unicodedata.normalize('NFD', ch)
        if d != ch: nfd.append((cp, [ord(x) for x in d]))
        k = unicodedata.normalize('NFKD', ch)
        if k != ch: nfkd.append((cp, [ord(x) for x in k]))
        raw = unicodedata.decomposition(ch)
        if raw and not raw.startswith('<'):
            parts = [int(x, 16) for x in raw.split()]
            if len(parts) == 2 and unicodedata.normalize('NFC', chr(parts[0]) + chr(parts[1])) == ch:
                comp.append((parts[0], parts[1], cp))
    out = bytearray(b'FTUN')
    major, minor, patch = (int(x) for x in unicodedata.unidata_version.split('.'))
    out += struct.pack('<i', major * 10000 + minor * 100 + patch)
    out += struct.pack('<i', len(ccc))
    for cp, c in ccc: out += struct.pack('<ii', cp, c)
    for table in (nfd, nfkd):
        out += struct.pack('<i', len(table))
        for cp, seq in table: out += struct.pack('<ii', cp, len(seq)) + struct.pack('<%di' % len(seq), *seq)
    out += struct.pack('<i', len(comp))
    for a, b, c in comp: out += struct.pack('<iii', a, b, c)
    target = Path(__file__).with_name('normalization.bin')
    target.write_bytes(bytes(out))
    print(f'{target}: unicode {unicodedata.unidata_version}, {len(ccc)} classes, {len(nfd)} NFD, {len(nfkd)} NFKD, {len(comp)} compositions, {len(out)} bytes')

if __name__ == '__main__':
    main()
