using FineTune.Data.Templates;
using FineTune.Engine.Cpu;
using FineTune.Models;
using FineTune.Models.Quantization;
using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;
using FineTune.Tokenizers;
using FineTune.Training;
using FineTune.Training.Chat;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// The demo (pipelines/identity as committed, on the CPU) with quantization_bit: 4: LoRA trains against an NF4
/// (double-quantized) base to a low loss, the merge folds the adapter into the dequantized base, and the merged
/// model answers its identity question.
/// </summary>
public sealed class QLoraPipelineTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void The_demo_with_quantization_bit_4_trains_merges_into_the_dequantized_base_and_answers()
    {
        string yaml = File.ReadAllText(Path.Combine(ServeTests.RepoRoot, "pipelines", "identity", "pipeline.yaml"));
        foreach (string piece in new[] { "device: auto", "num_train_epochs: 60", "    finetuning_type: lora\n", "  eval:\n", "  export:\n" }) Assert.Contains(piece, yaml);
        yaml = yaml.Replace("device: auto", "device: cpu").Replace("num_train_epochs: 60", "num_train_epochs: 40")
            .Replace("    finetuning_type: lora\n", "    finetuning_type: lora\n    quantization_bit: 4\n")
            .Replace("data:\n", $"data:\n  dataset_dir: {Path.Combine(ServeTests.RepoRoot, "data")}\n");
        yaml = yaml[..yaml.IndexOf("  eval:\n", StringComparison.Ordinal)] + yaml[yaml.IndexOf("  merge:\n", StringComparison.Ordinal)..];
        yaml = yaml[..yaml.IndexOf("  export:\n", StringComparison.Ordinal)];
        string file = _dir.Write("identity/pipeline.yaml", yaml);
        var report = new PipelineRunner(StageRegistry.CreateDefault()).Run(PipelineLoader.Load(file), new RunOptions(), new NullStageProgress(), CancellationToken.None);
        var train = report.Stages.Single(s => s.Name == "train");
        var merge = report.Stages.Single(s => s.Name == "merge");
        string baseDir = report.Stages.Single(s => s.Name == "download").OutputDirectory!;

        var log = TrainerLog.Read(Path.Combine(train.OutputDirectory!, TrainerLog.FileName)).Where(e => e.Loss is not null).ToList();
        Assert.True(log[^1].Loss < 0.1, string.Join(" ", log.Select(e => e.Loss)));
        Assert.Contains(train.Notes!, n => n.StartsWith("QLoRA: frozen decoder linears held as nf4 (double quantization)", StringComparison.Ordinal));
        Assert.Equal(new QuantizationSetup(4), QuantizedBaseFile.Read(train.OutputDirectory!));
        Assert.Contains(merge.Notes!, n => n == "QLoRA: folded into the dequantized nf4 (double quantization) base, written as float32 (every decoder linear is the base as the adapter saw it)");

        // A merged linear is the base quantized → dequantized, plus s·B·A.
        const string module = "model.layers.1.mlp.down_proj";
        using (var baseWeights = SafetensorsReader.Open(baseDir))
        using (var adapter = SafetensorsReader.Open(Path.Combine(train.OutputDirectory!, "adapter_model.safetensors")))
        using (var merged = SafetensorsReader.Open(merge.OutputDirectory!))
        {
            var info = baseWeights.Get(module + ".weight");
            var expected = new QuantizationSetup(4).RoundTrip(baseWeights.ReadAsFloat32(module + ".weight"), (int)info.Shape[0], (int)info.Shape[1]);
            var a = adapter.ReadAsFloat32($"base_model.model.{module}.lora_A.weight");
            var b = adapter.ReadAsFloat32($"base_model.model.{module}.lora_B.weight");
            LoraMerge.AddLoraDelta(expected, info.Shape, a, b, 16, 32f / 16f, embedding: false);
            Assert.Equal(expected, merged.ReadAsFloat32(module + ".weight"));
        }

        using var model = CausalLM.Load(merge.OutputDirectory!, new CpuBackend(2), TrainingSetup.Inference);
        var session = new ChatSession(model, Tokenizer.FromDirectory(merge.OutputDirectory!), ChatTemplate.Get("qwen3", enableThinking: false),
            null, new GenerationOptions { MaxNewTokens = 40 });
        Assert.Contains("FineTune Assistant", session.Reply("Who are you?"));
    }
}
