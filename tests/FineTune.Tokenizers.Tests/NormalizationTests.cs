using System.Text;

namespace FineTune.Tokenizers.Tests;

/// <summary>The embedded Unicode normalisation (string.Normalize is a no-op under InvariantGlobalization).</summary>
public sealed class NormalizationTests
{
    [Theory]
    [InlineData("Cafe\u0301", "Caf\u00e9")]                  // e + acute composes
    [InlineData("a\u0323\u0302", "\u1ead")]                 // dot below + circumflex → ậ (canonical order first)
    [InlineData("a\u0302\u0323", "\u1ead")]
    [InlineData("\u1112\u1161\u11ab", "\ud55c")]             // conjoining jamo → 한
    [InlineData("\u212b", "\u00c5")]                         // ANGSTROM SIGN → Å (singleton)
    [InlineData("\u0344", "\u0308\u0301")]                   // excluded from composition
    [InlineData("plain ascii", "plain ascii")]
    public void Nfc_matches_unicode(string input, string expected)
    {
        Assert.Equal(expected, UnicodeNormalization.Normalize(input, NormalizationForm.FormC));
    }

    [Theory]
    [InlineData("\ufb01", "fi")]
    [InlineData("\uff21\uff22", "AB")]
    [InlineData("\u00bd", "1\u20442")]
    [InlineData("x\u00b2", "x2")]
    [InlineData("\u00a0", " ")]
    [InlineData("\u3300", "\u30a2\u30d1\u30fc\u30c8")]      // ㌀ → アパート (composes the voiced mark)
    public void Nfkc_matches_unicode(string input, string expected)
    {
        Assert.Equal(expected, UnicodeNormalization.Normalize(input, NormalizationForm.FormKC));
    }

    [Fact]
    public void Nfd_decomposes_hangul_and_accents()
    {
        Assert.Equal("\u1112\u1161\u11ab e\u0301", UnicodeNormalization.Normalize("\ud55c \u00e9", NormalizationForm.FormD));
    }

    [Fact]
    public void Already_normalized_text_is_returned_as_is()
    {
        string s = "東京 Привет 😀";
        Assert.Same(s, UnicodeNormalization.Normalize(s, NormalizationForm.FormC));
    }
}
