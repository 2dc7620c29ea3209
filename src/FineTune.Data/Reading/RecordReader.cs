using System.Buffers;
using System.Text;
using System.Text.Json;

namespace FineTune.Data.Reading;

/// <summary>One record as read from a file: 1-based record number, the line it starts on, its JSON value.</summary>
public sealed record RawRecord(string File, int Number, int Line, JsonElement Value);

/// <summary>The records of one file plus the problems met while reading it (invalid JSON lines, ragged CSV rows).</summary>
public sealed record RecordFile(string File, IReadOnlyList<RawRecord> Records, IReadOnlyList<DataProblem> Problems, bool Unreadable);

/// <summary>
/// Reads .json (an array, or JSON lines), .jsonl and .csv files into JSON records. Invalid JSON is reported with
/// its line and column; in JSON-lines files one bad line is one bad record, in an array the file is unreadable.
/// </summary>
public static class RecordReader
{
    private static readonly JsonDocumentOptions Options = new() { AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow };

    public static RecordFile Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var body = bytes.AsSpan();
        if (body.StartsWith("\uFEFF"u8)) body = body[3..];
        var ext = Path.GetExtension(path).ToLowerInvariant();
        if (ext == ".csv") return ReadCsv(path, Encoding.UTF8.GetString(body));
        var first = FirstNonWhitespace(body);
        return ext == ".json" && first == (byte)'[' ? ReadArray(path, body.ToArray()) : ReadLines(path, body.ToArray());
    }

    private static int FirstNonWhitespace(ReadOnlySpan<byte> span)
    {
        foreach (var b in span)
            if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n')) return b;
        return -1;
    }

    private static RecordFile ReadArray(string path, byte[] bytes)
    {
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(bytes, Options);
            root = doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            var problem = new DataProblem(path, 0, (int)(e.LineNumber ?? 0) + 1, "",
                $"invalid JSON at line {(e.LineNumber ?? 0) + 1}, column {(e.BytePositionInLine ?? 0) + 1}: {Registry.DatasetRegistry.FirstSentence(e.Message)}");
            return new RecordFile(path, [], [problem], true);
        }
        var lines = ElementStartLines(bytes);
        var records = new List<RawRecord>(root.GetArrayLength());
        var i = 0;
        foreach (var element in root.EnumerateArray())
        {
            records.Add(new RawRecord(path, i + 1, i < lines.Count ? lines[i] : 0, element));
            i++;
        }
        return new RecordFile(path, records, [], false);
    }

    /// <summary>1-based line of each top-level array element's first token.</summary>
    private static List<int> ElementStartLines(byte[] bytes)
    {
        var starts = new List<int>();
        var reader = new Utf8JsonReader(bytes, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip });
        long scanned = 0;
        var line = 1;
        while (reader.Read())
        {
            if (reader.CurrentDepth != 1 || reader.TokenType is JsonTokenType.EndObject or JsonTokenType.EndArray) continue;
            var at = reader.TokenStartIndex;
            line += bytes.AsSpan((int)scanned, (int)(at - scanned)).Count((byte)'\n');
            scanned = at;
            starts.Add(line);
            if (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray) reader.Skip();
        }
        return starts;
    }

    private static RecordFile ReadLines(string path, byte[] bytes)
    {
        var records = new List<RawRecord>();
        var problems = new List<DataProblem>();
        var span = bytes.AsSpan();
        var lineNumber = 0;
        var number = 0;
        while (span.Length > 0)
        {
            lineNumber++;
            var nl = span.IndexOf((byte)'\n');
            var lineBytes = nl < 0 ? span : span[..nl];
            span = nl < 0 ? default : span[(nl + 1)..];
            if (FirstNonWhitespace(lineBytes) < 0) continue;
            number++;
            try
            {
                using var doc = JsonDocument.Parse(lineBytes.ToArray(), Options);
                records.Add(new RawRecord(path, number, lineNumber, doc.RootElement.Clone()));
            }
            catch (JsonException e)
            {
                problems.Add(new DataProblem(path, number, lineNumber, "",
                    $"invalid JSON at line {lineNumber}, column {(e.BytePositionInLine ?? 0) + 1}: {Registry.DatasetRegistry.FirstSentence(e.Message)}"));
            }
        }
        return new RecordFile(path, records, problems, false);
    }

    private static RecordFile ReadCsv(string path, string text)
    {
        var rows = ParseCsv(text);
        var records = new List<RawRecord>();
        var problems = new List<DataProblem>();
        if (rows.Count == 0) return new RecordFile(path, records, problems, false);
        var header = rows[0].Fields;
        for (var r = 1; r < rows.Count; r++)
        {
            var (line, fields) = rows[r];
            if (fields.Count == 1 && fields[0].Length == 0) continue;
            if (fields.Count != header.Count)
            {
                problems.Add(new DataProblem(path, r, line, "", $"expected {header.Count} comma-separated fields as in the header, found {fields.Count}"));
                continue;
            }
            var buffer = new ArrayBufferWriter<byte>();
            using (var w = new Utf8JsonWriter(buffer))
            {
                w.WriteStartObject();
                for (var i = 0; i < header.Count; i++)
                {
                    // Empty cells read as null, as the CSV loader of Hugging Face datasets gives them.
                    if (fields[i].Length == 0) w.WriteNull(header[i]);
                    else w.WriteString(header[i], fields[i]);
                }
                w.WriteEndObject();
            }
            using var doc = JsonDocument.Parse(buffer.WrittenMemory);
            records.Add(new RawRecord(path, r, line, doc.RootElement.Clone()));
        }
        return new RecordFile(path, records, problems, false);
    }

    /// <summary>RFC 4180: fields separated by commas, quoted fields may hold commas, quotes ("") and newlines.</summary>
    private static List<(int Line, List<string> Fields)> ParseCsv(string text)
    {
        var rows = new List<(int, List<string>)>();
        var fields = new List<string>();
        var field = new StringBuilder();
        var line = 1;
        var rowLine = 1;
        var quoted = false;
        for (var i = 0; i < text.Length; i++)
        {
            var ch = text[i];
            if (quoted)
            {
                if (ch == '"')
                {
                    if (i + 1 < text.Length && text[i + 1] == '"') { field.Append('"'); i++; }
                    else quoted = false;
                }
                else
                {
                    if (ch == '\n') line++;
                    field.Append(ch);
                }
                continue;
            }
            switch (ch)
            {
                case '"' when field.Length == 0: quoted = true; break;
                case ',': fields.Add(field.ToString()); field.Clear(); break;
                case '\r': break;
                case '\n':
                    fields.Add(field.ToString()); field.Clear();
                    rows.Add((rowLine, fields)); fields = [];
                    line++; rowLine = line;
                    break;
                default: field.Append(ch); break;
            }
        }
        if (field.Length > 0 || fields.Count > 0)
        {
            fields.Add(field.ToString());
            rows.Add((rowLine, fields));
        }
        return rows;
    }
}
