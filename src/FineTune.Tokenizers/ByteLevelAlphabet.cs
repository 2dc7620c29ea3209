namespace FineTune.Tokenizers;

/// <summary>
/// GPT-2's reversible byte ↔ printable-character map used by the ByteLevel pre-tokenizer and decoder:
/// bytes 33–126, 161–172 and 174–255 stand for themselves; the remaining 68 bytes are assigned
/// U+0100, U+0101, … in increasing byte order, so every byte has a visible, non-space character.
/// </summary>
internal static class ByteLevelAlphabet
{
    public static readonly char[] ByteToChar = BuildByteToChar();
    // Indexed by char value (< 0x200); -1 where the char is not part of the alphabet.
    public static readonly short[] CharToByte = BuildCharToByte();

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    private static short[] BuildCharToByte()
    {
        var rev = new short[0x200];
        Array.Fill(rev, (short)-1);
        var forward = BuildByteToChar();
        for (int b = 0; b < 256; b++) rev[forward[b]] = (short)b;
        return rev;
    }

    /// <summary>Maps UTF-8 bytes of <paramref name="text"/> to alphabet chars.</summary>
    public static string Map(ReadOnlySpan<char> text)
    {
        int max = System.Text.Encoding.UTF8.GetMaxByteCount(text.Length);
        byte[]? rented = null;
        Span<byte> bytes = max <= 512 ? stackalloc byte[max] : (rented = System.Buffers.ArrayPool<byte>.Shared.Rent(max));
        int n = System.Text.Encoding.UTF8.GetBytes(text, bytes);
        var result = string.Create(n, bytes[..n].ToArray(), static (dst, src) =>
        {
            for (int i = 0; i < src.Length; i++) dst[i] = ByteToChar[src[i]];
        });
        if (rented != null) System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        return result;
    }
}
