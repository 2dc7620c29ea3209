using System.Text.Json.Nodes;
using FineTune.Engine;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests.Formats;

/// <summary>
/// llama.cpp (node-llama-cpp's prebuilt CPU build, tests/fixtures/llama-generate.js) loads every GGUF type FineTune
/// writes and decodes greedily from them. The model: a scratch qwen3 whose rows are multiples of 256 (so the K-quants
/// are used, not their fallbacks), fully fine-tuned for a few steps to memorise one token sequence, so its greedy
/// answer has margins that a faithful quantization keeps.
/// </summary>
public sealed class GgufLlamaCppTests(Xunit.Abstractions.ITestOutputHelper output) : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    /// <summary>A fixed sequence of 40 ids from the 269-token vocabulary (a linear congruential walk).</summary>
    private static int[] Sequence() => Enumerable.Range(0, 40).Select(i => (i * 97 + 13) % 251 + 3).ToArray();

    private static string TrainMemorizer(string baseDir, string trainedDir)
    {
        ScratchModel.Generate(new ScratchModelSpec
        {
            HiddenSize = 256, IntermediateSize = 256, NumHiddenLayers = 1, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDim = 64, TieWordEmbeddings = false, Seed = 21,
        }, baseDir);
        using var model = CausalLM.Load(baseDir, new CpuBackend(2), new TrainingSetup { FinetuningType = FinetuningType.Full });
        var ids = Sequence();
        int n = ids.Length - 1;
        var batch = new TokenBatch(1, n, ids[..n], ids[1..], Enumerable.Range(0, n).ToArray(), new int[n]);
        for (int step = 1; step <= 12; step++)
        {
            model.ZeroGrad();
            model.ForwardBackward(batch, 1f / n);
            var norm = model.GradNormSquared();
            foreach (var p in model.TrainableParameters)
                p.Step(new AdamWStep(1e-2f, 0.9f, 0.999f, 1e-8f, 0f, step, 1f, 1f), norm);
        }
        model.SaveModel(trainedDir, SafetensorsDType.F32);
        return trainedDir;
    }

    private static JsonArray RunLlama(JsonObject request) => NodeFixtures.LlamaGenerate(request);

    [Fact]
    public void Llama_cpp_loads_every_type_and_greedy_decodes_the_memorised_answer_from_q6_k_and_q8_0()
    {
        var trained = TrainMemorizer(_dir.File("base"), _dir.File("trained"));
        var ids = Sequence();
        int[] prompt = ids[..6];
        int[] expected;
        using (var model = CausalLM.Load(trained, new CpuBackend(2), new TrainingSetup { FinetuningType = FinetuningType.Full }))
            expected = model.Generate([prompt], new GenerationOptions { MaxNewTokens = 16 })[0].Tokens;
        // FineTune's own greedy decode of the merged model reproduces the memorised continuation.
        Assert.Equal(ids[6..22], expected);

        var types = Enum.GetValues<GgufFileType>();
        var request = new JsonArray();
        foreach (var t in types)
        {
            var path = _dir.File($"m-{t}.gguf");
            GgufExporter.Export(trained, path, t, "memorizer");
            request.Add(new JsonObject { ["path"] = path, ["prompt"] = new JsonArray(prompt.Select(x => (JsonNode?)x).ToArray()), ["maxTokens"] = 16 });
        }
        var results = RunLlama(new JsonObject { ["models"] = request });
        foreach (var r in results) output.WriteLine(r!.ToJsonString());

        Assert.Equal(types.Length, results.Count);
        var generated = types.Zip(results, (t, r) => (Type: t, FileType: r!["type"]!.GetValue<int>(), Tokens: r["tokens"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray())).ToArray();
        Assert.All(generated, g => Assert.Equal((int)g.Type, g.FileType));
        Assert.All(generated, g => Assert.Equal(16, g.Tokens.Length));
        foreach (var t in new[] { GgufFileType.F32, GgufFileType.F16, GgufFileType.BF16, GgufFileType.Q8_0, GgufFileType.Q6_K })
            Assert.Equal($"{t}: {string.Join(' ', expected)}", $"{t}: {string.Join(' ', generated.Single(g => g.Type == t).Tokens)}");
    }
}
