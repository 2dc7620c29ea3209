using System.CommandLine;
using System.Diagnostics;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using FineTune.Tokenizers;

namespace FineTune.Cli.Commands;

/// <summary>
/// `finetune tokenize`: one JSON string per stdin line → one JSON array of ids per stdout line
/// (`--decode`: the reverse). `--bench FILE` prints encode throughput instead.
/// </summary>
public sealed class TokenizeCommand : ICliCommand
{
    public Command Create()
    {
        var tokenizer = new Option<string>("--tokenizer")
        {
            Description = "A tokenizer.json, or a model directory holding tokenizer.json (+ tokenizer_config.json).",
            Required = true,
        };
        var addSpecial = new Option<bool>("--add-special-tokens") { Description = "Let the post-processor add BOS/EOS (as HF's add_special_tokens=True)." };
        var decode = new Option<bool>("--decode") { Description = "Read JSON arrays of ids, write JSON strings." };
        var skipSpecial = new Option<bool>("--skip-special-tokens") { Description = "With --decode: leave special tokens out of the text." };
        var bench = new Option<string?>("--bench") { Description = "Measure encode throughput (MB/s) on this UTF-8 text file instead of reading stdin." };
        var seconds = new Option<double>("--seconds") { Description = "With --bench: seconds per measurement.", DefaultValueFactory = _ => 5 };
        var command = new Command("tokenize", "Encode or decode with a Hugging Face tokenizer.json, one JSON value per line (stdin → stdout).")
        {
            tokenizer, addSpecial, decode, skipSpecial, bench, seconds,
        };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            try
            {
                var tok = Load(r.GetValue(tokenizer)!);
                if (r.GetValue(bench) is { } corpus) return Bench(tok, corpus, r.GetValue(seconds), r.GetValue(addSpecial));
                return r.GetValue(decode)
                    ? Decode(tok, r.GetValue(skipSpecial), Console.In, Console.OpenStandardOutput())
                    : Encode(tok, r.GetValue(addSpecial), Console.In, Console.OpenStandardOutput());
            }
            catch (Exception e) when (e is TokenizerFormatException or TokenizeInputException)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return CliSupport.ExitUserError;
            }
        }));
        return command;
    }

    private static Tokenizer Load(string path)
    {
        if (Directory.Exists(path)) return Tokenizer.FromDirectory(path);
        if (File.Exists(path)) return Tokenizer.FromFile(path);
        throw new TokenizeInputException($"--tokenizer {path}: no such file or directory; pass a tokenizer.json or a model directory.");
    }

    private static readonly JsonWriterOptions WriterOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static int Encode(Tokenizer tokenizer, bool addSpecialTokens, TextReader input, Stream output)
    {
        using var buffered = new BufferedStream(output, 1 << 16);
        using var writer = new Utf8JsonWriter(buffered, WriterOptions);
        int lineNumber = 0;
        for (string? line; (line = input.ReadLine()) != null;)
        {
            lineNumber++;
            string text = ParseLine(line, lineNumber, JsonValueKind.String, "a JSON string such as \"Hello\"").GetString()!;
            writer.WriteStartArray();
            foreach (int id in tokenizer.Encode(text, addSpecialTokens)) writer.WriteNumberValue(id);
            writer.WriteEndArray();
            writer.Flush();
            buffered.WriteByte((byte)'\n');
            writer.Reset();
        }
        return 0;
    }

    public static int Decode(Tokenizer tokenizer, bool skipSpecialTokens, TextReader input, Stream output)
    {
        using var buffered = new BufferedStream(output, 1 << 16);
        using var writer = new Utf8JsonWriter(buffered, WriterOptions);
        int lineNumber = 0;
        var ids = new List<int>();
        for (string? line; (line = input.ReadLine()) != null;)
        {
            lineNumber++;
            var array = ParseLine(line, lineNumber, JsonValueKind.Array, "a JSON array of token ids such as [9707, 1879]");
            ids.Clear();
            foreach (var item in array.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out int id))
                    throw new TokenizeInputException($"stdin line {lineNumber}: {item.GetRawText()} is not a token id; expected integers.");
                ids.Add(id);
            }
            writer.WriteStringValue(tokenizer.Decode(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(ids), skipSpecialTokens));
            writer.Flush();
            buffered.WriteByte((byte)'\n');
            writer.Reset();
        }
        return 0;
    }

    private static JsonElement ParseLine(string line, int lineNumber, JsonValueKind kind, string expected)
    {
        try
        {
            using var doc = JsonDocument.Parse(line);
            if (doc.RootElement.ValueKind != kind)
                throw new TokenizeInputException($"stdin line {lineNumber}: expected {expected}, got {doc.RootElement.ValueKind.ToString().ToLowerInvariant()}.");
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new TokenizeInputException($"stdin line {lineNumber}: not valid JSON ({e.Message}); expected {expected} per line.");
        }
    }

    private static int Bench(Tokenizer tokenizer, string corpus, double seconds, bool addSpecialTokens)
    {
        if (!File.Exists(corpus)) throw new TokenizeInputException($"--bench {corpus}: no such file.");
        string text = File.ReadAllText(corpus);
        string[] lines = text.Split('\n').Where(l => l.Length > 0).ToArray();
        long bytes = lines.Sum(l => (long)Encoding.UTF8.GetByteCount(l));
        Console.WriteLine($"corpus {corpus}: {lines.Length} non-empty lines, {bytes / 1e6:F2} MB; {Environment.ProcessorCount} cores; {seconds:0.#} s per mode");
        var modes = new (string Name, Func<long> Run)[]
        {
            ("single", () => { long n = 0; foreach (var l in lines) n += tokenizer.Encode(l, addSpecialTokens).Length; return n; }),
            ("batch", () => { long n = 0; foreach (var ids in tokenizer.EncodeBatch(lines, addSpecialTokens)) n += ids.Length; return n; }),
            ("whole", () => tokenizer.Encode(text, addSpecialTokens).Length),
        };
        var process = Process.GetCurrentProcess();
        // First pass on a fresh tokenizer: empty word cache, JIT included — the pessimistic number.
        process.Refresh();
        var coldCpu = process.TotalProcessorTime;
        var coldClock = Stopwatch.StartNew();
        long coldTokens = modes[0].Run();
        double coldWall = coldClock.Elapsed.TotalSeconds;
        process.Refresh();
        double coldCpuSeconds = (process.TotalProcessorTime - coldCpu).TotalSeconds;
        Console.WriteLine($"finetune single, first pass (cold cache): {bytes / coldWall / 1e6:F2} MB/s wall, {bytes / coldCpuSeconds / 1e6:F2} MB per cpu-s ({coldTokens} tokens)");
        foreach (var (name, run) in modes)
        {
            long tokens = run(); // warm-up: JIT and word cache, as the reference's first pass
            process.Refresh();
            var cpuStart = process.TotalProcessorTime;
            var clock = Stopwatch.StartNew();
            int passes = 0;
            do { tokens = run(); passes++; } while (clock.Elapsed.TotalSeconds < seconds);
            double wall = clock.Elapsed.TotalSeconds;
            process.Refresh();
            double cpu = (process.TotalProcessorTime - cpuStart).TotalSeconds;
            long measured = name == "whole" ? Encoding.UTF8.GetByteCount(text) : bytes;
            Console.WriteLine($"finetune {name}: {measured * passes / wall / 1e6:F2} MB/s wall, {measured * passes / cpu / 1e6:F2} MB per cpu-s ({tokens} tokens, {passes} passes)");
        }
        Console.WriteLine("reference: (cd tests/fixtures && npm ci && node hf-bench.js <tokenizer.json> <corpus> [seconds])");
        return 0;
    }
}

/// <summary>Bad input to `finetune tokenize` (a line that is not the expected JSON, a missing file).</summary>
public sealed class TokenizeInputException(string message) : Exception(message);
