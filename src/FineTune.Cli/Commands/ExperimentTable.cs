using System.Globalization;
using System.Text;

namespace FineTune.Cli.Commands;

/// <summary>
/// The experiment commands' tables: plain aligned text (no colour, no wrapping: they are piped and pasted) or a markdown
/// table (--md) for pull requests and CI step summaries.
/// </summary>
public static class ExperimentTable
{
    public static string Render(IReadOnlyList<string> headers, IReadOnlyList<IReadOnlyList<string>> rows, bool markdown)
    {
        var sb = new StringBuilder();
        if (markdown)
        {
            sb.Append("| ").AppendJoin(" | ", headers.Select(Cell)).Append(" |\n");
            sb.Append('|').AppendJoin("|", headers.Select(_ => "---")).Append("|\n");
            foreach (var r in rows) sb.Append("| ").AppendJoin(" | ", r.Select(Cell)).Append(" |\n");
            return sb.ToString();
        }
        var widths = headers.Select((h, i) => Math.Max(h.Length, rows.Count == 0 ? 0 : rows.Max(r => r[i].Length))).ToArray();
        void Line(IReadOnlyList<string> cells) =>
            sb.Append(string.Join("  ", cells.Select((c, i) => i == cells.Count - 1 ? c : c.PadRight(widths[i]))).TrimEnd()).Append('\n');
        Line(headers);
        foreach (var r in rows) Line(r);
        return sb.ToString();
    }

    // A '|' inside a cell would end it.
    private static string Cell(string s) => s.Replace("|", "\\|");

    /// <summary>Integers as integers, other values with up to 6 decimals (tiny ones in exponent form); "-" for none.</summary>
    public static string Number(double? value)
    {
        if (value is not double v) return "-";
        if (v == Math.Floor(v) && Math.Abs(v) < 1e15) return v.ToString("0", CultureInfo.InvariantCulture);
        return Math.Abs(v) < 1e-4 ? v.ToString("G4", CultureInfo.InvariantCulture) : v.ToString("0.######", CultureInfo.InvariantCulture);
    }

    /// <summary>"+0.0123", "-2", "0" for a difference; "-" for none.</summary>
    public static string Signed(double? change) =>
        change is not double d ? "-" : d > 0 ? "+" + Number(d) : Number(d);
}
