using System.Globalization;
using System.Text;
using System.Text.Json;

namespace FineTune.Data.Templates;

/// <summary>
/// JSON text exactly as Python's <c>json.dumps(x, ensure_ascii=False)</c> writes it (separators ", " and ": ",
/// or "," and ": " with indent) — the bytes LLaMA-Factory and the Jinja <c>tojson</c> filter put into prompts.
/// </summary>
public static class PythonJson
{
    public static string Dumps(JsonElement value, int? indent = null)
    {
        var sb = new StringBuilder();
        Write(sb, value, indent, 0);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, JsonElement v, int? indent, int depth)
    {
        switch (v.ValueKind)
        {
            case JsonValueKind.Object:
            {
                var props = v.EnumerateObject().ToList();
                if (props.Count == 0) { sb.Append("{}"); break; }
                sb.Append('{');
                for (var i = 0; i < props.Count; i++)
                {
                    if (i > 0) sb.Append(indent is null ? ", " : ",");
                    NewLine(sb, indent, depth + 1);
                    WriteString(sb, props[i].Name);
                    sb.Append(": ");
                    Write(sb, props[i].Value, indent, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append('}');
                break;
            }
            case JsonValueKind.Array:
            {
                var items = v.EnumerateArray().ToList();
                if (items.Count == 0) { sb.Append("[]"); break; }
                sb.Append('[');
                for (var i = 0; i < items.Count; i++)
                {
                    if (i > 0) sb.Append(indent is null ? ", " : ",");
                    NewLine(sb, indent, depth + 1);
                    Write(sb, items[i], indent, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append(']');
                break;
            }
            case JsonValueKind.String: WriteString(sb, v.GetString()!); break;
            case JsonValueKind.Number: sb.Append(Number(v)); break;
            case JsonValueKind.True: sb.Append("true"); break;
            case JsonValueKind.False: sb.Append("false"); break;
            default: sb.Append("null"); break;
        }
    }

    /// <summary>Integers print as written; other numbers as Python's float repr (shortest round-trip, ".0" for whole values).</summary>
    private static string Number(JsonElement v)
    {
        var raw = v.GetRawText();
        if (!raw.Contains('.') && !raw.Contains('e') && !raw.Contains('E')) return raw;
        var d = v.GetDouble();
        var r = d.ToString("R", CultureInfo.InvariantCulture);
        if (r.Contains('E'))
        {
            // Python writes 1e-05 / 1e+20 for exponents.
            var parts = r.Split('E');
            var exp = int.Parse(parts[1], CultureInfo.InvariantCulture);
            return $"{parts[0]}e{(exp < 0 ? "-" : "+")}{Math.Abs(exp):00}";
        }
        return r.Contains('.') ? r : r + ".0";
    }

    private static void NewLine(StringBuilder sb, int? indent, int depth)
    {
        if (indent is not { } n) return;
        sb.Append('\n').Append(' ', n * depth);
    }

    public static void WriteString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (var ch in s)
        {
            switch (ch)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (ch < 0x20) sb.Append("\\u").Append(((int)ch).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(ch);
                    break;
            }
        }
        sb.Append('"');
    }

    public static string Quote(string s)
    {
        var sb = new StringBuilder();
        WriteString(sb, s);
        return sb.ToString();
    }
}
