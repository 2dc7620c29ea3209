using System.Buffers;
using System.Text;
using System.Text.Json;
using FineTune.IO;

namespace FineTune.Data.Reading;

/// <summary>One record as read from a file: 1-based record number, the line it starts on, its JSON value.</summary>
public sealed record RawRecord(string File, int Number, int Line, JsonElement Value);

/// <summary>The records of one file plus the problems met while reading it (invalid JSON lines, ragged CSV rows).</summary>
public sealed record RecordFile(string File, IReadOnlyList<RawRecord> Records, IReadOnlyList<DataProblem> Problems, bool Unreadable);

/// <summary>
/// Reads .json (an array, or JSON lines), .jsonl and .csv files into JSON records. Invalid JSON is reported with
/// its line and column; in JSON-lines files one bad line is one bad record, in an array the file is unreadable.
/// Text must be UTF-8 (a byte order mark is fine): a byte that is not is reported with its record, line and offset.
/// </summary>
public static class RecordReader
{
    /// <summary>The most FineTune reads from one dataset file (it holds the whole file in memory); larger data is split
    /// into several files of one folder, which <c>file_name</c> may name.</summary>
    public const long MaxFileBytes = 1L << 30;

    internal const string LimitFor = "one dataset file";

    private static readonly JsonDocumentOptions Options = new() { AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow };

    public static RecordFile Read(string path)
    {
        var bytes = InputFile.ReadAllBytes(path, MaxFileBytes, LimitFor, p => new DatasetException($"{path}: {p.Text}; {Advice(p)}"));
        var start = bytes.Length - InputFile.WithoutByteOrderMark(bytes).Length;
        var ext = Path.GetExtension(path).ToLowerInvariant();
        // In JSON lines a line that is not UTF-8 is one bad record (found below); UTF-16 (bad < 0), an array or a CSV
        // table with such a byte cannot be read at all.
        if (InputFile.Utf8Problem(bytes, out var bad) is { } encoding && (bad < 0 || !IsJsonLines(ext, bytes, start)))
        {
            var (record, line) = bad < 0 ? (0, (int?)null) : ext == ".csv" ? CsvRecordAt(bytes, start, bad) : ArrayRecordAt(bytes, start, bad);
            return new RecordFile(path, [], [new DataProblem(path, record, line, "", encoding)], true);
        }
        if (ext == ".csv") return ReadCsv(path, Encoding.UTF8.GetString(bytes, start, bytes.Length - start));
        return IsJsonLines(ext, bytes, start) ? ReadLines(path, bytes, start) : ReadArray(path, bytes.AsMemory(start));
    }

    /// <summary>The advice that goes with a file that cannot be read at all.</summary>
    internal static string Advice(InputFile.Problem p) => p.TooLarge
        ? "split it into several files in one folder and set file_name to the folder."
        : "point file_name at a regular .json, .jsonl or .csv file.";

    /// <summary>A .json file is an array when its first token is '['; otherwise, like .jsonl, one record per line.</summary>
    private static bool IsJsonLines(string ext, byte[] bytes, int start) =>
        ext != ".csv" && !(ext == ".json" && FirstNonWhitespace(bytes.AsSpan(start)) == (byte)'[');

    private static int FirstNonWhitespace(ReadOnlySpan<byte> span)
    {
        foreach (var b in span)
            if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n')) return b;
        return -1;
    }

    /// <summary>The 1-based array element that holds byte <paramref name="offset"/> (0 before the first), and its line.</summary>
    private static (int Record, int? Line) ArrayRecordAt(byte[] bytes, int start, int offset)
    {
        // The bytes before the bad one are valid UTF-8: read their tokens as an unfinished document.
        var reader = new Utf8JsonReader(bytes.AsSpan(start, offset - start), isFinalBlock: false, state: default);
        var record = 0;
        try
        {
            while (reader.Read())
                if (reader.CurrentDepth == 1 && reader.TokenType is not (JsonTokenType.EndObject or JsonTokenType.EndArray)) record++;
        }
        catch (JsonException)
        {
            // Invalid JSON before the bad byte: the count so far still places it.
        }
        return (record, InputFile.LineAndColumn(bytes, offset).Line);
    }

    /// <summary>The CSV row (1-based after the header, 0 for the header) that holds byte <paramref name="offset"/>, and its line.</summary>
    private static (int Record, int? Line) CsvRecordAt(byte[] bytes, int start, int offset)
    {
        var before = Encoding.UTF8.GetString(bytes, start, offset - start);
        var rows = ParseCsv(before);
        // ParseCsv counts an unfinished last row; a bad byte right after a line break starts a row of its own.
        var row = before.Length == 0 || before[^1] == '\n' ? rows.Count : rows.Count - 1;
        return (row, InputFile.LineAndColumn(bytes, offset).Line);
    }

    private static RecordFile ReadArray(string path, ReadOnlyMemory<byte> bytes)
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
        var lines = ElementStartLines(bytes.Span);
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
    private static List<int> ElementStartLines(ReadOnlySpan<byte> bytes)
    {
        var starts = new List<int>();
        var reader = new Utf8JsonReader(bytes, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip });
        long scanned = 0;
        var line = 1;
        while (reader.Read())
        {
            if (reader.CurrentDepth != 1 || reader.TokenType is JsonTokenType.EndObject or JsonTokenType.EndArray) continue;
            var at = reader.TokenStartIndex;
            line += bytes.Slice((int)scanned, (int)(at - scanned)).Count((byte)'\n');
            scanned = at;
            starts.Add(line);
            if (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray) reader.Skip();
        }
        return starts;
    }

    /// <summary>One record per non-blank line; <paramref name="start"/> skips a byte order mark (offsets stay the file's).</summary>
    private static RecordFile ReadLines(string path, byte[] bytes, int start)
    {
        var records = new List<RawRecord>();
        var problems = new List<DataProblem>();
        var offset = start;
        var lineNumber = 0;
        var number = 0;
        while (offset < bytes.Length)
        {
            lineNumber++;
            var rest = bytes.AsSpan(offset);
            var nl = rest.IndexOf((byte)'\n');
            var lineBytes = nl < 0 ? rest : rest[..nl];
            var lineStart = offset;
            offset += nl < 0 ? rest.Length : nl + 1;
            if (FirstNonWhitespace(lineBytes) < 0) continue;
            number++;
            if (InputFile.FirstInvalidUtf8(lineBytes) is var bad and >= 0)
            {
                problems.Add(new DataProblem(path, number, lineNumber, "", InputFile.InvalidByteMessage(bytes, lineStart + bad)));
                continue;
            }
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
