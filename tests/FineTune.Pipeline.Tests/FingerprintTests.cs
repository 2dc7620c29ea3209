using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

public sealed class FingerprintTests
{
    private static LoadedPipeline Load(TempDir dir, string yaml) => PipelineLoader.Load(TestPipelines.Write(dir, yaml));

    private static string Fingerprint(LoadedPipeline p, StageKind kind) =>
        new StageFingerprint(kind, StageFingerprint.ParametersOf(kind, p.Definition), new Dictionary<StageKind, string>(), []).Hash;

    [Fact]
    public void FingerprintOfKnownParametersIsStable()
    {
        using var dir = new TempDir();
        var p = Load(dir, TestPipelines.Full);
        // Pinned: a change here means every user's cache is invalidated, so it must be deliberate (bump FormatVersion).
        Assert.Equal("""{"data":{"template":"qwen3"},"split":{"cutoff_len":2048,"enable_thinking":true,"mask_history":false,"neat_packing":false,"packing":null,"seed":42,"stage":"sft","train_on_prompt":false,"val_size":0.1}}""",
            CanonicalJson.Serialize(StageFingerprint.ParametersOf(StageKind.Split, p.Definition)));
        Assert.Equal(ContentHasher.Sha256Hex("""{"format":1,"inputs":[],"kind":"split","params":{"data":{"template":"qwen3"},"split":{"cutoff_len":2048,"enable_thinking":true,"mask_history":false,"neat_packing":false,"packing":null,"seed":42,"stage":"sft","train_on_prompt":false,"val_size":0.1}},"upstream":{}}"""),
            Fingerprint(p, StageKind.Split));
    }

    [Fact]
    public void OneGgufTypeIsFingerprintedAsTheScalarItUsedToBe()
    {
        // gguf_type became a list; one type keeps the canonical form (and the lock files) of the scalar key.
        using var a = new TempDir();
        using var b = new TempDir();
        using var c = new TempDir();
        var scalar = Load(a, TestPipelines.Full.Replace("formats: [hf]", "formats: [hf, gguf]\n    gguf_type: q8_0"));
        var list = Load(b, TestPipelines.Full.Replace("formats: [hf]", "formats: [hf, gguf]\n    gguf_type: [q8_0]"));
        var two = Load(c, TestPipelines.Full.Replace("formats: [hf]", "formats: [hf, gguf]\n    gguf_type: [q4_k_m, q8_0]"));
        Assert.Equal("""{"data":{"template":"qwen3"},"export":{"export_size":5,"formats":["hf","gguf"],"gguf_type":"q8_0","system":null}}""",
            CanonicalJson.Serialize(StageFingerprint.ParametersOf(StageKind.Export, scalar.Definition)));
        Assert.Equal(Fingerprint(scalar, StageKind.Export), Fingerprint(list, StageKind.Export));
        Assert.Equal("""{"data":{"template":"qwen3"},"export":{"export_size":5,"formats":["hf","gguf"],"gguf_type":["q4_k_m","q8_0"],"system":null}}""",
            CanonicalJson.Serialize(StageFingerprint.ParametersOf(StageKind.Export, two.Definition)));
    }

    [Fact]
    public void DefaultGgufTypeIsF16AsBefore()
    {
        using var dir = new TempDir();
        var p = Load(dir, TestPipelines.Full);
        Assert.Equal("""{"data":{"template":"qwen3"},"export":{"export_size":5,"formats":["hf"],"gguf_type":"f16","system":null}}""",
            CanonicalJson.Serialize(StageFingerprint.ParametersOf(StageKind.Export, p.Definition)));
    }

    [Fact]
    public void SpellingOfEqualValuesDoesNotMatter()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var p1 = Load(a, TestPipelines.Full);
        // Same values: exponent form, explicit defaults, flow vs block list, key order.
        var p2 = Load(b, TestPipelines.Full
            .Replace("learning_rate: 0.005", "max_grad_norm: 1.0\n    learning_rate: 5e-3\n    lora_rank: 8")
            .Replace("formats: [hf]", "formats:\n      - hf"));
        foreach (var kind in StageGraph.Order)
            Assert.Equal(Fingerprint(p1, kind), Fingerprint(p2, kind));
    }

    [Fact]
    public void KeysThatOnlyChangeLogsPlotsAndCheckpointsStayOutOfTheTrainFingerprint()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        using var c = new TempDir();
        var plain = Load(a, TestPipelines.Full);
        var reporting = Load(b, TestPipelines.Full.Replace("max_steps: 10",
            "max_steps: 10\n    save_steps: 7\n    logging_steps: 3\n    save_total_limit: 2\n    plot_loss: true"));
        Assert.Equal(Fingerprint(plain, StageKind.Train), Fingerprint(reporting, StageKind.Train));
        var train = StageFingerprint.ParametersOf(StageKind.Train, reporting.Definition)["train"]!.AsObject();
        foreach (var key in new[] { "save_steps", "logging_steps", "save_total_limit", "plot_loss", "device", "resume_from_checkpoint" })
            Assert.False(train.ContainsKey(key), key);
        // A key that changes what is trained still does.
        var reseeded = Load(c, TestPipelines.Full.Replace("max_steps: 10", "max_steps: 10\n    seed: 7"));
        Assert.NotEqual(Fingerprint(plain, StageKind.Train), Fingerprint(reseeded, StageKind.Train));
    }

    [Fact]
    public void InputPathsDoNotEnterTheFingerprintOnlyContent()
    {
        var fp1 = new StageFingerprint(StageKind.Register, [], new Dictionary<StageKind, string>(), [("data/a.json", "abc")]).Hash;
        var fp2 = new StageFingerprint(StageKind.Register, [], new Dictionary<StageKind, string>(), [("elsewhere/b.json", "abc")]).Hash;
        var fp3 = new StageFingerprint(StageKind.Register, [], new Dictionary<StageKind, string>(), [("data/a.json", "abd")]).Hash;
        Assert.Equal(fp1, fp2);
        Assert.NotEqual(fp1, fp3);
    }

    [Fact]
    public void TreeHashCoversNamesSizesAndContent()
    {
        using var dir = new TempDir();
        dir.Write("m/a.txt", "one");
        dir.Write("m/sub/b.txt", "two");
        var hasher = new ContentHasher(null);
        var files = hasher.HashTree(Path.Combine(dir.Path, "m"));
        Assert.Equal(["a.txt", "sub/b.txt"], files.Select(f => f.Path));
        var sha = (string s) => ContentHasher.Sha256Hex(s);
        Assert.Equal(ContentHasher.Sha256Hex($"a.txt\n3\n{sha("one")}\nsub/b.txt\n3\n{sha("two")}\n"), ContentHasher.TreeHash(files));
    }

    [Fact]
    public void HashIndexSkipsUnchangedFilesAndRehashesChangedOnes()
    {
        using var dir = new TempDir();
        var file = dir.Write("big.bin", new string('x', 10_000));
        var index = Path.Combine(dir.Path, "index.json");
        var h1 = new ContentHasher(index);
        var first = h1.HashFile(file);
        h1.Save();
        var h2 = new ContentHasher(index);
        Assert.Equal(first, h2.HashFile(file));
        Assert.Equal(0, h2.BytesHashed);
        File.WriteAllText(file, new string('y', 10_001));
        Assert.Equal(ContentHasher.Sha256Hex(new string('y', 10_001)), h2.HashFile(file));
        Assert.Equal(10_001, h2.BytesHashed);
    }
}
