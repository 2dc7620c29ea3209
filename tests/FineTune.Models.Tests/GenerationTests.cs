namespace FineTune.Models.Tests;

public sealed class GenerationTests
{
    private static int ArgMax(ReadOnlySpan<float> x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++) if (x[i] > x[best]) best = i;
        return best;
    }

    /// <summary>Greedy next token of the full (cache-free) forward over the whole sequence.</summary>
    private static int FullForwardNext(CausalLM model, int[] sequence)
    {
        int n = sequence.Length;
        var batch = new TokenBatch(1, n, sequence, Enumerable.Repeat(-100, n).ToArray(), Enumerable.Range(0, n).ToArray(), new int[n]);
        float[] logits = model.ForwardLogits(batch);
        int v = model.Spec.VocabSize;
        return ArgMax(logits.AsSpan((n - 1) * v, v));
    }

    [Theory]
    [InlineData("qwen3", true)]
    [InlineData("qwen2", false)]
    [InlineData("llama", false)]
    public void GreedyWithKvCacheEqualsFullForwardArgmaxTokenByToken(string architecture, bool tied)
    {
        using var model = TinyModels.Create(TinyModels.Spec(architecture, tied), new TrainingSetup { LoraRank = 2 }, std: 0.5f);
        TinyModels.RandomizeLoraB(model, 4); // an unmerged adapter takes part in decoding
        int[] prompt = [3, 14, 15, 9, 2];
        var result = model.Generate([prompt], new GenerationOptions { MaxNewTokens = 12 })[0];
        Assert.Equal(12, result.Tokens.Length);
        Assert.Equal("length", result.FinishReason);
        var sequence = prompt.ToList();
        foreach (int token in result.Tokens)
        {
            Assert.Equal(FullForwardNext(model, [.. sequence]), token);
            sequence.Add(token);
        }
        Assert.True(result.Tokens.Distinct().Count() > 1, "a constant output would make the comparison weak");
    }

    [Fact]
    public void BatchedLeftPaddedPromptsGenerateWhatEachPromptGeneratesAlone()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        int[] a = [1, 2, 3, 4, 5, 6], b = [7, 8];
        var options = new GenerationOptions { MaxNewTokens = 6 };
        var both = model.Generate([a, b], options);
        Assert.Equal(model.Generate([a], options)[0].Tokens, both[0].Tokens);
        Assert.Equal(model.Generate([b], options)[0].Tokens, both[1].Tokens);
    }

    [Fact]
    public void StopsAtEosAndWhenTheCallbackSaysSo()
    {
        using var model = TinyModels.Create(TinyModels.Spec("llama", false), TrainingSetup.Inference, std: 0.5f);
        int[] prompt = [5, 6, 7];
        var free = model.Generate([prompt], new GenerationOptions { MaxNewTokens = 8 })[0].Tokens;
        var eos = model.Generate([prompt], new GenerationOptions { MaxNewTokens = 8, EosTokenIds = [free[2]] })[0];
        Assert.Equal("eos", eos.FinishReason);
        Assert.Equal(free.TakeWhile(t => t != free[2]).ToArray(), eos.Tokens);
        var streamed = new List<int>();
        var stop = model.Generate([prompt], new GenerationOptions { MaxNewTokens = 8 }, (_, t) => { streamed.Add(t); return streamed.Count < 3; })[0];
        Assert.Equal("stop", stop.FinishReason);
        Assert.Equal(free.Take(3).ToArray(), stop.Tokens);
        Assert.Equal(stop.Tokens, streamed.ToArray());
    }

    [Fact]
    public void SamplingIsReproducibleBySeedAndTopKOneIsGreedy()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        int[] prompt = [9, 9, 1];
        var sample = new GenerationOptions { MaxNewTokens = 10, DoSample = true, Temperature = 1.5, TopP = 0.95, Seed = 11 };
        Assert.Equal(model.Generate([prompt], sample)[0].Tokens, model.Generate([prompt], sample)[0].Tokens);
        var greedy = model.Generate([prompt], new GenerationOptions { MaxNewTokens = 10 })[0].Tokens;
        Assert.Equal(greedy, model.Generate([prompt], sample with { TopK = 1 })[0].Tokens);
    }

    [Fact]
    public void RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits()
    {
        float[] logits = [2f, -1f, 1.5f];
        int pick = CausalLM.Pick(logits, new HashSet<int> { 0, 1 }, new GenerationOptions { RepetitionPenalty = 2.0 }, new Random(0));
        Assert.Equal([1f, -2f, 1.5f], logits);
        Assert.Equal(2, pick);
    }
}
