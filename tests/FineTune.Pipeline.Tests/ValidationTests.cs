using FineTune.Models.Tests;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

public sealed class ValidationTests
{
    private static IReadOnlyList<PipelineError> Errors(string yaml)
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, yaml);
        var e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file));
        return e.Errors.Select(x => x with { File = Path.GetFileName(x.File) }).ToArray();
    }

    private const string FiveMistakes = """
        name: bad
        model:
          source: scratch
          scratch:
            architecture: lama
        data:
          dataset: [identity]
          template: qwen3
        stages:
          download: {}
          register: {}
          split:
            val_size: 0.1
            cutoff_len: -5
          train:
            lerning_rate: 0.001
            lora_rank: eight
            device: gpu
        """;

    [Fact]
    public void FiveMistakesGiveFiveLocatedErrors()
    {
        var errors = Errors(FiveMistakes).Select(e => e.ToString()).ToArray();
        Assert.Equal(
        [
            "pipeline.yaml:5:19: $.model.scratch.architecture: expected one of llama, qwen2, qwen3, mistral, phi3, gemma2, gemma3_text, qwen3_moe, mixtral, got 'lama'; did you mean 'llama'?",
            "pipeline.yaml:14:17: $.stages.split.cutoff_len: -5 is out of range: expected an integer ≥ 1",
            "pipeline.yaml:16:5: $.stages.train.lerning_rate: unknown key 'lerning_rate' in stages.train; did you mean 'learning_rate'?",
            "pipeline.yaml:17:16: $.stages.train.lora_rank: expected an integer in [1, 65536], got 'eight'",
            "pipeline.yaml:18:13: $.stages.train.device: 'gpu' does not match auto, cpu, cuda or cuda:N",
        ], errors);
    }

    [Fact]
    public void MisspelledGgufTypeIsLocatedWithASuggestion()
    {
        var error = Assert.Single(Errors(TestPipelines.Full.Replace("formats: [hf]", "formats: [gguf]\n    gguf_type: q4_km")));
        Assert.Equal("$.stages.export.gguf_type", error.JsonPath);
        Assert.Equal("expected one of f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q5_0, q4_0, q3_k_m, q2_k, f32, got 'q4_km'; did you mean 'q4_k_m'?", error.Message);
        Assert.Equal((24, 16), (error.Line, error.Column));
    }

    [Fact]
    public void WrongGgufTypeInAListIsLocatedAtItsItem()
    {
        var error = Assert.Single(Errors(TestPipelines.Full.Replace("formats: [hf]", "formats: [gguf]\n    gguf_type: [q8_0, q6_km]")));
        Assert.Equal("$.stages.export.gguf_type[1]", error.JsonPath);
        Assert.Equal("expected one of f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q5_0, q4_0, q3_k_m, q2_k, f32, got 'q6_km'; did you mean 'q6_k'?", error.Message);
    }

    [Fact]
    public void UnknownTopLevelKeyWithoutCloseMatchListsTheAllowedKeys()
    {
        var error = Assert.Single(Errors(TestPipelines.Full + "\nextras: 1\n"));
        Assert.Equal("unknown key 'extras' at the top level; expected one of: name, model, data, cache, stages", error.Message);
        Assert.Equal((24, 1), (error.Line, error.Column));
    }

    [Fact]
    public void MisspelledStageNameSuggestsTheStage()
    {
        var yaml = TestPipelines.Full.Replace("  eval:\n", "  evaluate:\n");
        var error = Assert.Single(Errors(yaml));
        Assert.Equal("$.stages.evaluate", error.JsonPath);
        Assert.Equal("unknown key 'evaluate' in stages; did you mean 'eval'?", error.Message);
    }

    [Fact]
    public void MissingRequiredKeyIsReportedAtItsParent()
    {
        var error = Assert.Single(Errors("name: x\nmodel:\n  scratch: {}\n"));
        Assert.Equal("pipeline.yaml:3:3: $.model.source: missing required key 'source' (hf://org/name[@revision] (Hugging Face Hub), a local model directory (relative to the pipeline file), or 'scratch' (a small model FineTune generates).)", error.ToString());
    }

    [Fact]
    public void ExclusiveUpperBoundIsEnforcedAndNamed()
    {
        var error = Assert.Single(Errors(TestPipelines.Full.Replace("    max_steps: 10", "    max_steps: 10\n    lora_dropout: 1")));
        Assert.Equal("1 is out of range: expected a number in [0, 1)", error.Message);
    }

    [Fact]
    public void ScratchSizesThatConfigJsonWouldRefuseAreRejectedAtValidate()
    {
        // A scratch model that validates must also load: the bounds are config.json's (ModelConfig), not looser ones.
        var errors = Errors(TestPipelines.Full.Replace("    hidden_size: 32", "    hidden_size: 100000\n    head_dim: 15"));
        Assert.Equal(
            ["$.model.scratch.hidden_size: 100000 is out of range: expected an integer in [1, 65536]",
             "$.model.scratch.head_dim: head_dim must be even (RoPE rotates pairs of dimensions), got 15"],
            errors.Select(e => $"{e.JsonPath}: {e.Message}").ToArray());
    }

    [Fact]
    public void FractionalValSizeAboveOneIsRejected()
    {
        var error = Assert.Single(Errors(TestPipelines.Full.Replace("val_size: 0.1", "val_size: 2.5")));
        Assert.Equal("$.stages.split.val_size", error.JsonPath);
        Assert.Equal("2.5 is neither a fraction in [0, 1) nor a whole sample count", error.Message);
        Assert.Equal((15, 15), (error.Line, error.Column));
    }

    [Fact]
    public void StageWithoutItsUpstreamIsRejected()
    {
        var yaml = TestPipelines.Full.Replace("  split:\n    val_size: 0.1\n", "");
        var errors = Errors(yaml);
        Assert.Equal(
        [
            "$.stages.train: stage train needs stage split: add a 'split:' block to stages",
            "$.stages.eval: stage eval needs stage split: add a 'split:' block to stages",
        ], errors.Select(e => $"{e.JsonPath}: {e.Message}"));
    }

    [Fact]
    public void YamlSyntaxErrorIsLocated()
    {
        var error = Assert.Single(Errors("name: x\nmodel:\n  source: [scratch\n"));
        Assert.Equal("$", error.JsonPath);
        Assert.StartsWith("YAML syntax: ", error.Message);
        Assert.Equal(4, error.Line);
    }

    [Fact]
    public void TabIndentationIsReportedAtItsLine()
    {
        var error = Assert.Single(Errors("name: x\nmodel:\n  source: scratch\ndata:\n\tdataset: [identity]\n"));
        Assert.Equal("pipeline.yaml:5:1: $: YAML syntax: While scanning a mapping, found invalid tab as indentation.", error.ToString());
    }

    [Fact]
    public void NestingDeeperThanTheLimitIsALocatedError()
    {
        // Flow style: one line, 100,000 levels; the 65th level (the root mapping is the 1st) starts at column 8 + 63.
        var yaml = "name: x\nmodel: " + new string('[', 100_000) + new string(']', 100_000) + "\n";
        var error = Assert.Single(Errors(yaml));
        Assert.Equal("pipeline.yaml:2:71: $: YAML nested deeper than 64 levels; a pipeline needs 4 (flatten the value here)", error.ToString());
    }

    [Fact]
    public void BlockNestingDeeperThanTheLimitIsALocatedError()
    {
        // "- - - x": block sequences nest two columns apart on one line.
        var yaml = "name: x\nmodel:\n  " + string.Concat(Enumerable.Repeat("- ", 100_000)) + "x\n";
        var error = Assert.Single(Errors(yaml));
        Assert.Equal(3, error.Line);
        Assert.Equal("YAML nested deeper than 64 levels; a pipeline needs 4 (flatten the value here)", error.Message);
    }

    [Fact]
    public void ErrorsInListItemsNameTheirIndexAndLine()
    {
        var yaml = TestPipelines.Full.Replace("  dataset: [identity]", "  dataset:\n    - {a: 1}\n    - identity\n    - [x]")
            .Replace("    formats: [hf]", "    formats: [hf, {b: 2}, onnx]");
        var errors = Errors(yaml);
        Assert.Equal(
        [
            "pipeline.yaml:9:7: $.data.dataset[0]: expected a string, got a mapping",
            "pipeline.yaml:11:7: $.data.dataset[2]: expected a string, got a list",
            "pipeline.yaml:26:19: $.stages.export.formats[1]: expected a string, got a mapping",
        ], errors.Select(e => e.ToString()));
    }

    [Fact]
    public void ABadKeyInsideABlockKeepsTheRulesAboutTheBlock()
    {
        var yaml = TestPipelines.Full.Replace("  split:\n    val_size: 0.1\n", "").Replace("    max_steps: 10", "    max_steps: ten");
        Assert.Equal(
        [
            "$.stages.train: stage train needs stage split: add a 'split:' block to stages",
            "$.stages.train.max_steps: expected an integer ≥ -1, got 'ten'",
            "$.stages.eval: stage eval needs stage split: add a 'split:' block to stages",
        ], Errors(yaml).Select(e => $"{e.JsonPath}: {e.Message}"));
    }

    [Fact]
    public void UnknownEnumInAListNamesItsIndex()
    {
        var error = Assert.Single(Errors(TestPipelines.Full.Replace("    formats: [hf]", "    formats: [hf, hf, ggfu]")));
        Assert.Equal("pipeline.yaml:23:23: $.stages.export.formats[2]: expected one of hf, gguf, got 'ggfu'; did you mean 'gguf'?", error.ToString());
    }

    [Fact]
    public void UnknownDatasetNameIsLocatedAtItsListItem()
    {
        var yaml = TestPipelines.Full.Replace("  dataset: [identity]", "  dataset:\n    - identity\n    - idenity");
        var error = Assert.Single(Errors(yaml));
        Assert.Equal("pipeline.yaml:10:7: $.data.dataset[1]: no dataset named 'idenity' in data/dataset_info.json; did you mean 'identity'?", error.ToString());
    }

    [Fact]
    public void BadDatasetEntryIsReportedOnlyForThePipelineThatUsesIt()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        var registry = dir.Write("data/dataset_info.json", """{"identity": {"file_name": "identity.json"}, "broken": {"file_name": 7}}""");
        Assert.Equal("fake", PipelineLoader.Load(file).Definition.Name);
        File.WriteAllText(file, TestPipelines.Full.Replace("  dataset: [identity]", "  dataset: [identity, broken]"));
        var error = Assert.Single(Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file)).Errors);
        Assert.Equal($"{file}:8:23: $.data.dataset[1]: {registry}: dataset 'broken', key 'file_name': expected a string, got 7.", error.ToString());
    }

    [Fact]
    public void PipelineThatIsNotUtf8IsLocated()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        File.WriteAllBytes(file, System.Text.Encoding.Latin1.GetBytes(TestPipelines.Full.Replace("name: fake", "name: caf\u00e9")));
        var error = Assert.Single(Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file)).Errors);
        Assert.Equal($"{file}:1:10: $: byte 0xE9 at offset 9 (line 1, column 10) is not UTF-8: save the file as UTF-8 (e.g. iconv -f windows-1252 -t utf-8)", error.ToString());
    }

    [Fact]
    public void PipelineWithByteOrderMarkIsRead()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        File.WriteAllBytes(file, [0xEF, 0xBB, 0xBF, .. System.Text.Encoding.UTF8.GetBytes(TestPipelines.Full)]);
        Assert.Equal("fake", PipelineLoader.Load(file).Definition.Name);
    }

    [Fact]
    public void PipelineAboveTheSizeLimitIsRejectedBeforeReading()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        using (var f = File.OpenWrite(file)) f.SetLength(PipelineLoader.MaxPipelineBytes + 1);
        var e = Assert.Throws<PipelineUserException>(() => PipelineLoader.Load(dir.Path));
        Assert.Equal($"{file}: 1048577 bytes, more than the 1 MiB limit for pipeline.yaml; a pipeline names its data and models, it does not hold them.", e.Message);
    }

    [Fact]
    public void PipelineLinkedToDevZeroIsRejectedBeforeReading()
    {
        using var dir = new TempDir();
        var link = Path.Combine(dir.Path, "pipeline.yaml");
        File.CreateSymbolicLink(link, "/dev/zero");
        var e = Assert.Throws<PipelineUserException>(() => PipelineLoader.Load(dir.Path));
        Assert.Equal($"{link}: links to /dev/zero, a character device, not a regular file; pipeline.yaml must be a regular text file.", e.Message);
    }

    [Fact]
    public void EveryTruncationIsAValidPipelineOrLocatedErrors()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        for (var n = 0; n < TestPipelines.Full.Length; n++)
        {
            var yaml = TestPipelines.Full[..n];
            try
            {
                PipelineLoader.Parse(yaml, file);
            }
            catch (PipelineValidationException e)
            {
                Assert.All(e.Errors, x => Assert.True(x.Line >= 1 && x.Line <= yaml.Count(c => c == '\n') + 2 && x.Column >= 1 && x.JsonPath.StartsWith('$'), $"{n}: {x}"));
            }
        }
    }

    [Fact]
    public void RandomEditsGiveAValidPipelineOrLocatedErrors()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        // YAML's punctuation, where YamlDotNet's own exceptions hide (an unclosed '[' before a line at column 1).
        const string alphabet = "[]{}:,-?&*!|>'\"%@`#\t\n \\~0a.";
        var rng = new Random(20261201);
        for (var t = 0; t < 3000; t++)
        {
            var text = new System.Text.StringBuilder(TestPipelines.Full);
            for (var k = rng.Next(1, 4); k > 0; k--)
            {
                var at = rng.Next(text.Length);
                switch (rng.Next(3))
                {
                    case 0: text.Insert(at, alphabet[rng.Next(alphabet.Length)]); break;
                    case 1: text.Remove(at, 1); break;
                    default: text[at] = alphabet[rng.Next(alphabet.Length)]; break;
                }
            }
            var yaml = text.ToString();
            try
            {
                PipelineLoader.Parse(yaml, file);
            }
            catch (PipelineValidationException e)
            {
                Assert.All(e.Errors, x => Assert.True(x.Line >= 1 && x.Column >= 1 && x.JsonPath.StartsWith('$'), $"{t}: {x}\n{yaml}"));
            }
        }
    }

    public static TheoryData<string> Blocks() =>
        new(["name", "model", "model.scratch", "data", "data.placeholders", "stages", "stages.download", "stages.register", "stages.split",
             "stages.train", "stages.eval", "stages.merge", "stages.export"]);

    [Theory]
    [MemberData(nameof(Blocks))]
    public void WrongTypeForABlockIsALocatedError(string block)
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        foreach (var value in new[] { "[1, 2]", "{x: 1}", "7", "'text'", "&a [*a]", "&m {x: *m}", "!!binary aGk=", "*nowhere", "[", "{", "'" })
        {
            var yaml = Replace(TestPipelines.Full, block, value);
            try
            {
                PipelineLoader.Parse(yaml, file); // a string is a valid name
            }
            catch (PipelineValidationException e)
            {
                Assert.All(e.Errors, x => Assert.True(x.Line >= 1 && x.Column >= 1 && x.JsonPath.StartsWith('$'), $"{block}: {value}: {x}"));
            }
        }
    }

    /// <summary><paramref name="yaml"/> with the value of the block at <paramref name="path"/> (a.b) set to <paramref name="value"/>.</summary>
    private static string Replace(string yaml, string path, string value)
    {
        var lines = yaml.Split('\n').ToList();
        var at = -1;
        var indent = "";
        foreach (var part in path.Split('.'))
        {
            at = lines.FindIndex(at + 1, l => l.StartsWith(indent + part + ":", StringComparison.Ordinal));
            Assert.True(at >= 0, path);
            indent += "  ";
        }
        var end = at + 1;
        while (end < lines.Count && lines[end].StartsWith(indent, StringComparison.Ordinal)) end++;
        var head = lines[at][..(lines[at].IndexOf(':') + 1)];
        lines.RemoveRange(at, end - at);
        lines.Insert(at, $"{head} {value}");
        return string.Join('\n', lines);
    }

    [Fact]
    public void CommaSeparatedListsAreAcceptedLikeLlamaFactory()
    {
        using var dir = new TempDir();
        var p = PipelineLoader.Load(TestPipelines.Write(dir, TestPipelines.Full.Replace("    max_steps: 10", "    max_steps: 10\n    lora_target: q_proj, v_proj")));
        Assert.Equal(["q_proj", "v_proj"], p.Definition.Stages.Train!.LoraTarget);
    }

    [Fact]
    public void EmptyBlockMeansStagePresentWithDefaults()
    {
        using var dir = new TempDir();
        var p = PipelineLoader.Load(TestPipelines.Write(dir));
        Assert.Equal(Config.ExportDtype.Auto, p.Definition.Stages.Merge!.ExportDtype);
        Assert.Equal(7, p.Stages.Count);
        Assert.Equal(32, p.Definition.Model.Scratch!.HiddenSize);
        Assert.Equal(2, p.Definition.Model.Scratch!.NumHiddenLayers);
    }

    [Fact]
    public void ExamplePipelineIsValid()
    {
        var p = PipelineLoader.Load(Path.Combine(RepoRoot.Path, "pipelines", "identity"));
        Assert.Equal("identity", p.Definition.Name);
        Assert.Equal(7, p.Stages.Count);
        Assert.Equal(Config.ScratchArchitecture.Qwen3, p.Definition.Model.Scratch!.Architecture);
    }
}

public static class RepoRoot
{
    public static string Path { get; } = Find();

    private static string Find()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(System.IO.Path.Combine(d.FullName, "FineTune.sln")))
                return d.FullName;
        throw new InvalidOperationException("FineTune.sln not found above " + AppContext.BaseDirectory);
    }
}
