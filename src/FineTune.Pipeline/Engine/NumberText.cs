using System.Globalization;

namespace FineTune.Pipeline.Engine;

/// <summary>
/// Numbers for people: integers as integers (vocab_size=151936, lr 0), other values with four significant digits and no
/// exponent between 1e-4 and 1e15 (0.09081, 60.5), an exponent only below that (5e-06).
/// </summary>
public static class NumberText
{
    public static string Format(double v)
    {
        if (double.IsNaN(v) || double.IsInfinity(v)) return v.ToString(CultureInfo.InvariantCulture);
        var abs = Math.Abs(v);
        if (abs < 1e15 && v == Math.Floor(v)) return v.ToString("0", CultureInfo.InvariantCulture);
        if (abs >= 1e15) return v.ToString("0.###e+00", CultureInfo.InvariantCulture);
        if (abs < 1e-4) return v.ToString("0.###e-00", CultureInfo.InvariantCulture);
        // Four significant digits: as many decimals as the integer part leaves.
        var decimals = Math.Max(0, 4 - ((int)Math.Floor(Math.Log10(abs)) + 1));
        var text = Math.Round(v, decimals, MidpointRounding.AwayFromZero).ToString("F" + decimals, CultureInfo.InvariantCulture);
        return text.Contains('.') ? text.TrimEnd('0').TrimEnd('.') : text;
    }
}
