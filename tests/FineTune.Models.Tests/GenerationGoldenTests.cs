using FineTune.Models.Generation;

namespace FineTune.Models.Tests;

/// <summary>
/// The engine's CPU tokens before the paged KV cache, device sampling and decode graphs, recorded on main at 410179c
/// (slot cache, host sampling): the same tiny model, prompts and settings must give exactly those tokens now.
/// </summary>
public sealed class GenerationGoldenTests
{
    private static readonly int[][] Prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11], [12], [13, 14, 15, 16, 17, 18, 19, 20, 21], [22, 23, 24, 25], [3, 3, 3]];

    private static string Join(IEnumerable<int[]> rows) => string.Join(" | ", rows.Select(r => string.Join(' ', r)));

    private static string Continuous(CausalLM model, GenerationOptions o, int slots, int budget)
    {
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = slots, MaxModelLength = 32, MaxBatchTokens = budget });
        var results = new int[Prompts.Length][];
        for (int i = 0; i < Prompts.Length; i++)
        {
            int row = i;
            engine.Add(new GenerationRequest(Prompts[i], o with { Seed = 40 + i, MaxNewTokens = 3 + i }) { OnFinished = s => results[row] = s.Tokens });
        }
        engine.RunToCompletion();
        return Join(results);
    }

    [Fact]
    public void StaticBatchGreedyTokensAreThoseOfTheSlotCache()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        var got = Join(model.Generate(Prompts, new GenerationOptions { MaxNewTokens = 5 }).Select(s => s.Tokens));
        Assert.Equal(GreedyStatic, got);
    }

    [Fact]
    public void StaticBatchSeededSamplingTokensAreThoseOfTheSlotCache()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        var o = new GenerationOptions { MaxNewTokens = 5, DoSample = true, Temperature = 1.3, TopK = 20, TopP = 0.9, RepetitionPenalty = 1.2, Seed = 5 };
        Assert.Equal(SampledStatic, Join(model.Generate(Prompts, o).Select(s => s.Tokens)));
    }

    [Fact]
    public void ContinuousBatchingTokensAreThoseOfTheSlotCache()
    {
        using var model = TinyModels.Create(TinyModels.Spec("llama", false), TrainingSetup.Inference, std: 0.5f);
        // Two sequences at once and a budget of 4 tokens: slots reused, prompts prefilled in chunks beside decodes.
        Assert.Equal(GreedyPenaltyContinuous, Continuous(model, new GenerationOptions { RepetitionPenalty = 1.3 }, 2, 4));
        Assert.Equal(SampledContinuous, Continuous(model, new GenerationOptions { DoSample = true, Temperature = 0.9, TopK = 0, TopP = 0.8 }, 3, 8));
    }

    private const string GreedyStatic = "3 12 0 9 24 | 21 29 0 29 29 | 24 24 24 24 24 | 8 8 2 21 21 | 21 4 10 10 8 | 27 27 27 24 17 | 18 9 24 24 24";
    private const string SampledStatic = "3 4 10 31 23 | 21 10 21 22 3 | 30 12 2 12 3 | 11 18 10 12 27 | 21 29 19 3 3 | 20 10 3 0 3 | 18 9 18 31 9";
    private const string GreedyPenaltyContinuous = "7 31 23 | 30 10 15 27 | 29 5 25 19 21 | 30 7 15 19 17 30 | 31 25 7 27 6 26 27 | 13 28 14 6 16 19 31 29 | 0 29 6 23 10 19 24 7 25";
    private const string SampledContinuous = "27 26 5 | 30 14 16 30 | 22 27 19 27 19 | 30 7 16 17 15 6 | 6 27 25 22 27 31 6 | 13 13 13 7 13 30 13 13 | 27 0 10 31 12 19 24 19 29";
}
