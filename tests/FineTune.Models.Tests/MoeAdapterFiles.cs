using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>
/// The steps the MoE adapter-file tests (experts' and router's LoRA) share: a small scratch hub model of a family, an
/// adapter trained from it (random B so it changes the model), and its reload.
/// </summary>
internal static class MoeAdapterFiles
{
    /// <summary>A scratch model of <paramref name="arch"/> (hidden 32, MoE intermediate 24, 2 layers) in <paramref name="dir"/>.</summary>
    public static string Scratch(TempDir dir, ModelArchitecture arch)
    {
        string path = dir.File("base-" + arch.ModelType);
        ScratchModel.Generate(new ScratchModelSpec
        {
            Architecture = arch, HiddenSize = 32, IntermediateSize = 24, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDim = 8, TieWordEmbeddings = false, InitializerRange = 0.2,
        }, path);
        return path;
    }

    /// <summary>The base with <paramref name="setup"/>'s adapters (B randomised): its logits on the packed batch; the adapter and the merged model saved.</summary>
    public static float[] SaveAdapterAndMerged(string baseDir, TrainingSetup setup, string adapter, string merged)
    {
        using var model = CausalLM.Load(baseDir, new CpuBackend(1), setup);
        TinyModels.RandomizeLoraB(model, 9);
        var logits = model.ForwardLogits(TinyModels.PackedBatch());
        model.SaveAdapter(adapter);
        model.SaveModel(merged);
        return logits;
    }

    /// <summary>Base + adapter reloaded computes <paramref name="logits"/>, and saved again writes the adapter's bytes.</summary>
    public static void AssertReloadsByteForByte(string baseDir, string adapter, string again, float[] logits)
    {
        using (var reloaded = CausalLM.Load(baseDir, new CpuBackend(1), TrainingSetup.Inference, adapter))
        {
            Assert.Equal(logits, reloaded.ForwardLogits(TinyModels.PackedBatch()));
            reloaded.SaveAdapter(again);
        }
        Assert.Equal(File.ReadAllBytes(Path.Combine(adapter, "adapter_model.safetensors")), File.ReadAllBytes(Path.Combine(again, "adapter_model.safetensors")));
    }
}
