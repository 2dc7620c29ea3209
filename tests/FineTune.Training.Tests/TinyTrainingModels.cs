using FineTune.Engine.Cpu;
using FineTune.Models;

namespace FineTune.Training.Tests;

/// <summary>The training tests' tiny qwen3-style model (random weights, CPU backend, one thread); disposes what it made.</summary>
internal sealed class TinyTrainingModels : IDisposable
{
    public static readonly TransformerSpec Spec = new()
    {
        Architecture = "qwen3", VocabSize = 48, HiddenSize = 32, IntermediateSize = 64, NumLayers = 2,
        NumHeads = 4, NumKvHeads = 2, HeadDimOverride = 8, QkNorm = true, TieWordEmbeddings = true, RopeTheta = 10000,
    };

    private readonly List<IDisposable> _owned = [];

    /// <summary>A fresh model (of <see cref="Spec"/> unless <paramref name="spec"/> is given): LoRA r4/α8 (seed 5) unless <paramref name="setup"/> says otherwise, weights N(0, 0.3) from seed 11.</summary>
    public CausalLM Create(TrainingSetup? setup = null, TransformerSpec? spec = null)
    {
        var backend = new CpuBackend(threads: 1);
        var model = CausalLM.Create(spec ?? Spec, backend, setup ?? new TrainingSetup { LoraRank = 4, LoraAlpha = 8, Seed = 5 }, new RandomWeights(11, std: 0.3f));
        _owned.Add(model);
        _owned.Add(backend);
        return model;
    }

    /// <summary>Disposes these with the rest (a model loaded elsewhere and its backend).</summary>
    public void Own(params IDisposable[] owned) => _owned.AddRange(owned);

    public void Dispose()
    {
        foreach (var d in _owned) d.Dispose();
    }
}
