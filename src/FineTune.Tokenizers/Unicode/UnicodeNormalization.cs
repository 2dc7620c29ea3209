using System.Buffers.Binary;
using System.Text;

namespace FineTune.Tokenizers;

/// <summary>
/// NFC / NFD / NFKC / NFKD on embedded Unicode tables (see generate_normalization_data.py): .NET's
/// <see cref="string.Normalize()"/> is a no-op under InvariantGlobalization. The algorithm is UAX #15:
/// full decomposition (Hangul arithmetically), canonical ordering by combining class, then canonical
/// composition with the blocking rule for the composed forms.
/// </summary>
internal static class UnicodeNormalization
{
    private const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
    private const int LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

    private sealed class Tables
    {
        public readonly Dictionary<int, byte> Ccc = new();
        public readonly Dictionary<int, int[]> Canonical = new();
        public readonly Dictionary<int, int[]> Compatibility = new();
        public readonly Dictionary<long, int> Compose = new();
        // Code points that may change under normalisation or interact with a neighbour; text without
        // them (and without Hangul) is already normalised. Indexed for the BMP, set for the rest.
        public readonly bool[] BmpCanonicalTouch = new bool[0x10000];
        public readonly bool[] BmpCompatTouch = new bool[0x10000];
        public readonly HashSet<int> AstralCanonicalTouch = new();
        public readonly HashSet<int> AstralCompatTouch = new();
        public string UnicodeVersion = "";
    }

    private static readonly Lazy<Tables> Data = new(Load);

    public static string UnicodeVersion => Data.Value.UnicodeVersion;

    private static Tables Load()
    {
        var t = new Tables();
        using var stream = typeof(UnicodeNormalization).Assembly.GetManifestResourceStream("FineTune.Tokenizers.normalization.bin")
            ?? throw new InvalidOperationException("FineTune.Tokenizers was built without its normalization.bin resource.");
        var bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        int pos = 4;
        int Next() { int v = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(pos)); pos += 4; return v; }
        int version = Next();
        t.UnicodeVersion = $"{version / 10000}.{version / 100 % 100}.{version % 100}";
        void Touch(int cp, bool canonical)
        {
            if (cp < 0x10000) { t.BmpCompatTouch[cp] = true; if (canonical) t.BmpCanonicalTouch[cp] = true; }
            else { t.AstralCompatTouch.Add(cp); if (canonical) t.AstralCanonicalTouch.Add(cp); }
        }
        for (int n = Next(); n > 0; n--) { int cp = Next(); t.Ccc[cp] = (byte)Next(); Touch(cp, true); }
        foreach (var (table, canonical) in new[] { (t.Canonical, true), (t.Compatibility, false) })
        {
            for (int n = Next(); n > 0; n--)
            {
                int cp = Next();
                var seq = new int[Next()];
                for (int i = 0; i < seq.Length; i++) seq[i] = Next();
                table[cp] = seq;
                Touch(cp, canonical);
            }
        }
        for (int n = Next(); n > 0; n--)
        {
            int a = Next(), b = Next(), c = Next();
            t.Compose[((long)a << 21) | (uint)b] = c;
            Touch(b, true); // a starter followed by b may compose
        }
        for (int cp = LBase; cp < LBase + LCount; cp++) Touch(cp, true);
        for (int cp = VBase; cp < VBase + VCount; cp++) Touch(cp, true);
        for (int cp = TBase; cp < TBase + TCount; cp++) Touch(cp, true);
        for (int cp = SBase; cp < SBase + SCount; cp++) Touch(cp, true);
        return t;
    }

    public static string Normalize(string text, NormalizationForm form)
    {
        bool compat = form is NormalizationForm.FormKC or NormalizationForm.FormKD;
        bool compose = form is NormalizationForm.FormC or NormalizationForm.FormKC;
        int touched = NextTouched(text, 0, compat);
        if (touched < 0) return text;
        var t = Data.Value;
        // Only runs of chars that may change are rewritten. A run starts at the untouched code point
        // before it (a starter that may compose with what follows) and ends before the next untouched
        // one, which can neither compose with nor reorder across anything before it.
        var sb = new StringBuilder(text.Length + 16);
        var cps = new List<int>();
        int pos = 0;
        while (touched >= 0)
        {
            int start = touched;
            if (start > pos) start -= start >= 2 && char.IsLowSurrogate(text[start - 1]) && char.IsHighSurrogate(text[start - 2]) ? 2 : 1;
            int end = touched;
            while (end < text.Length)
            {
                int w = char.IsHighSurrogate(text[end]) && end + 1 < text.Length && char.IsLowSurrogate(text[end + 1]) ? 2 : 1;
                if (end > touched && !IsTouched(t, text, end, w, compat)) break;
                end += w;
            }
            sb.Append(text, pos, start - pos);
            NormalizeRun(t, text.AsSpan(start, end - start), compat, compose, cps, sb);
            pos = end;
            touched = NextTouched(text, end, compat);
        }
        sb.Append(text, pos, text.Length - pos);
        return sb.ToString();
    }

    private static void NormalizeRun(Tables t, ReadOnlySpan<char> run, bool compat, bool compose, List<int> cps, StringBuilder output)
    {
        cps.Clear();
        foreach (var rune in run.EnumerateRunes()) Decompose(t, rune.Value, compat, cps);
        // Canonical ordering: stable sort of each run of non-starters by combining class.
        for (int i = 1; i < cps.Count; i++)
        {
            int c = Ccc(t, cps[i]);
            if (c == 0) continue;
            int j = i;
            while (j > 0 && Ccc(t, cps[j - 1]) > c) { (cps[j - 1], cps[j]) = (cps[j], cps[j - 1]); j--; }
        }
        if (compose) ComposeInPlace(t, cps);
        foreach (int cp in cps) output.Append(new Rune(cp));
    }

    private static bool IsTouched(Tables t, string text, int i, int width, bool compat)
    {
        if (width == 2)
        {
            int cp = char.ConvertToUtf32(text[i], text[i + 1]);
            return compat ? t.AstralCompatTouch.Contains(cp) : t.AstralCanonicalTouch.Contains(cp);
        }
        char c = text[i];
        if (char.IsSurrogate(c)) return false; // a lone surrogate is left as it is
        return compat ? t.BmpCompatTouch[c] : t.BmpCanonicalTouch[c];
    }

    private static int NextTouched(string text, int from, bool compat)
    {
        Tables? t = null;
        for (int i = from; i < text.Length; i++)
        {
            char c = text[i];
            if (c < 0x80) continue;
            t ??= Data.Value;
            int w = char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]) ? 2 : 1;
            if (IsTouched(t, text, i, w, compat)) return i;
            i += w - 1;
        }
        return -1;
    }

    private static int Ccc(Tables t, int cp) => t.Ccc.TryGetValue(cp, out byte c) ? c : 0;

    private static void Decompose(Tables t, int cp, bool compat, List<int> output)
    {
        if (cp >= SBase && cp < SBase + SCount)
        {
            int s = cp - SBase;
            output.Add(LBase + s / NCount);
            output.Add(VBase + s % NCount / TCount);
            if (s % TCount != 0) output.Add(TBase + s % TCount);
            return;
        }
        var table = compat ? t.Compatibility : t.Canonical;
        if (table.TryGetValue(cp, out var seq)) output.AddRange(seq);
        else output.Add(cp);
    }

    private static void ComposeInPlace(Tables t, List<int> cps)
    {
        if (cps.Count == 0) return;
        int starterIndex = Ccc(t, cps[0]) == 0 ? 0 : -1;
        int lastClass = 0; // class of the last mark kept after the current starter
        int write = 1;
        for (int read = 1; read < cps.Count; read++)
        {
            int cp = cps[read];
            int cls = Ccc(t, cp);
            // Not blocked: adjacent to the starter, or every mark in between has a lower class.
            if (starterIndex >= 0 && (write - 1 == starterIndex || lastClass < cls))
            {
                int composite = Pair(t, cps[starterIndex], cp);
                if (composite >= 0) { cps[starterIndex] = composite; continue; }
            }
            if (cls == 0) { starterIndex = write; lastClass = 0; }
            else lastClass = cls;
            cps[write++] = cp;
        }
        cps.RemoveRange(write, cps.Count - write);
    }

    private static int Pair(Tables t, int a, int b)
    {
        // Hangul LV and LVT are arithmetic.
        if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
            return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
        if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
            return a + (b - TBase);
        return t.Compose.TryGetValue(((long)a << 21) | (uint)b, out int c) ? c : -1;
    }
}
