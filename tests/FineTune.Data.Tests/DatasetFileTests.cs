using System.Text;
using FineTune.Data.Reading;
using FineTune.Data.Registry;

namespace FineTune.Data.Tests;

/// <summary>What a dataset file must be before its records are read: UTF-8 text in a regular file of sane size.</summary>
public sealed class DatasetFileTests
{
    private static byte[] Latin1(string text) => Encoding.Latin1.GetBytes(text);

    private static DatasetRegistry Registry(TempDir tmp, string entryJson) =>
        DatasetRegistry.Load(tmp.Write("dataset_info.json", "{\"d\": " + entryJson + "}"));

    private static DatasetValidationException Invalid(TempDir tmp, string fileName, byte[] content)
    {
        tmp.WriteBytes(fileName, content);
        var registry = Registry(tmp, $$"""{"file_name": "{{fileName}}"}""");
        return Assert.Throws<DatasetValidationException>(() => DatasetLoader.Load(registry, "d", new DatasetLoadOptions()));
    }

    [Fact]
    public void Latin1JsonArrayNamesRecordLineAndByteOffset()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, "a.json", Latin1("[\n  {\"instruction\": \"q\", \"output\": \"a\"},\n  {\"instruction\": \"café\", \"output\": \"b\"}\n]"));
        Assert.Equal(
            $"{tmp.Path}/a.json: record 2 (line 3): byte 0xE9 at offset 63 (line 3, column 23) is not UTF-8: " +
            "save the file as UTF-8 (e.g. iconv -f windows-1252 -t utf-8)",
            Assert.Single(e.Problems).ToString());
    }

    [Fact]
    public void Latin1JsonLineIsOneBadRecordThatSkipInvalidDrops()
    {
        using var tmp = new TempDir();
        var content = Latin1("{\"instruction\": \"q\", \"output\": \"a\"}\n{\"instruction\": \"café\", \"output\": \"b\"}\n");
        var e = Invalid(tmp, "a.jsonl", content);
        Assert.Equal(
            $"{tmp.Path}/a.jsonl: record 2 (line 2): byte 0xE9 at offset 56 (line 2, column 21) is not UTF-8: " +
            "save the file as UTF-8 (e.g. iconv -f windows-1252 -t utf-8)",
            Assert.Single(e.Problems).ToString());
        var loaded = DatasetLoader.Load(Registry(tmp, """{"file_name": "a.jsonl"}"""), "d", new DatasetLoadOptions { SkipInvalid = true });
        Assert.Equal((1, 1), (loaded.Conversations.Count, loaded.Dropped));
    }

    [Fact]
    public void Latin1CsvIsAnErrorNotReplacementCharacters()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, "a.csv", Latin1("instruction,input,output\nq,,a\ncafé,,b\n"));
        Assert.Equal(
            $"{tmp.Path}/a.csv: record 2 (line 3): byte 0xE9 at offset 33 (line 3, column 4) is not UTF-8: " +
            "save the file as UTF-8 (e.g. iconv -f windows-1252 -t utf-8)",
            Assert.Single(e.Problems).ToString());
    }

    [Fact]
    public void Utf16FileIsNamedAsSuch()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, "a.json", Encoding.Unicode.GetPreamble().Concat(Encoding.Unicode.GetBytes("[{\"instruction\": \"q\", \"output\": \"a\"}]")).ToArray());
        Assert.Equal($"{tmp.Path}/a.json: file: UTF-16 text (it starts with the byte order mark FF FE), not UTF-8: save the file as UTF-8",
            Assert.Single(e.Problems).ToString());
    }

    [Fact]
    public void Utf8ByteOrderMarkIsAccepted()
    {
        using var tmp = new TempDir();
        tmp.WriteBytes("a.json", [0xEF, 0xBB, 0xBF, .. "[{\"instruction\": \"q\", \"output\": \"é\"}]"u8]);
        var loaded = DatasetLoader.Load(Registry(tmp, """{"file_name": "a.json"}"""), "d", new DatasetLoadOptions());
        Assert.Equal("é", loaded.Conversations.Single().Messages[1].Content);
    }

    [Fact]
    public void DatasetLinkedToDevZeroIsRejectedBeforeReading()
    {
        using var tmp = new TempDir();
        var link = Path.Combine(tmp.Path, "a.json");
        File.CreateSymbolicLink(link, "/dev/zero");
        var registry = Registry(tmp, """{"file_name": "a.json"}""");
        var e = Assert.Throws<DatasetException>(() => registry.ResolveFiles(registry.Get("d")));
        Assert.Equal($"{link}: dataset 'd': links to /dev/zero, a character device, not a regular file; point file_name at a regular .json, .jsonl or .csv file.", e.Message);
    }

    [Fact]
    public void DatasetFileAboveTheSizeLimitIsRejectedBeforeReading()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "a.jsonl");
        // A sparse file: its length is what counts, and it costs no disk.
        using (var f = File.Create(path)) f.SetLength(RecordReader.MaxFileBytes + 1);
        var registry = Registry(tmp, """{"file_name": "a.jsonl"}""");
        var e = Assert.Throws<DatasetException>(() => registry.ResolveFiles(registry.Get("d")));
        Assert.Equal($"{path}: dataset 'd': 1073741825 bytes, more than the 1 GiB limit for one dataset file; " +
            "split it into several files in one folder and set file_name to the folder.", e.Message);
    }

    [Fact]
    public void LinkToDevZeroInsideADatasetFolderIsRejected()
    {
        using var tmp = new TempDir();
        tmp.Write("parts/a.jsonl", "{\"instruction\": \"q\", \"output\": \"a\"}\n");
        var link = Path.Combine(tmp.Path, "parts", "b.jsonl");
        File.CreateSymbolicLink(link, "/dev/zero");
        var registry = Registry(tmp, """{"file_name": "parts"}""");
        var e = Assert.Throws<DatasetException>(() => DatasetLoader.Load(registry, "d", new DatasetLoadOptions()));
        Assert.StartsWith($"{link}: dataset 'd': links to /dev/zero, a character device, not a regular file;", e.Message);
    }
    [Fact]
    public void LinkToAFileAboveTheLimitIsMeasuredByItsTarget()
    {
        using var tmp = new TempDir();
        var target = Path.Combine(tmp.Path, "big.bin");
        using (var f = File.Create(target)) f.SetLength(RecordReader.MaxFileBytes + 1);
        var link = Path.Combine(tmp.Path, "a.jsonl");
        File.CreateSymbolicLink(link, target);
        var registry = Registry(tmp, """{"file_name": "a.jsonl"}""");
        var e = Assert.Throws<DatasetException>(() => registry.ResolveFiles(registry.Get("d")));
        Assert.StartsWith($"{link}: dataset 'd': 1073741825 bytes, more than the 1 GiB limit for one dataset file;", e.Message);
    }

    [Fact]
    public void NamedPipeIsRejectedInsteadOfBlocking()
    {
        using var tmp = new TempDir();
        var fifo = Path.Combine(tmp.Path, "a.jsonl");
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", [fifo])) mkfifo.WaitForExit();
        var registry = Registry(tmp, """{"file_name": "a.jsonl"}""");
        var e = Assert.Throws<DatasetException>(() => registry.ResolveFiles(registry.Get("d")));
        Assert.Equal($"{fifo}: dataset 'd': is a named pipe (FIFO), not a regular file; point file_name at a regular .json, .jsonl or .csv file.", e.Message);
    }
}
