using FineTune.Engine.Cpu;
using FineTune.Models;
using FineTune.Training.Evaluation;

namespace FineTune.Training.Tests;

public sealed class PredictionTests
{
    [Fact]
    public void Label_is_the_last_trained_run_and_prompt_everything_before_it()
    {
        // Two turns: the first answer (7, 8) is history, the second (11, 12) is the label.
        var p = PredictionSet.FromSample([1, 2, 7, 8, 9, 10, 11, 12], [-100, -100, 7, 8, -100, -100, 11, 12], [8]).Single();
        Assert.Equal([1, 2, 7, 8, 9, 10], p.PromptIds);
        Assert.Equal([11, 12], p.LabelIds);
    }

    [Fact]
    public void Each_packed_sequence_gives_its_own_prompt()
    {
        var ps = PredictionSet.FromSample([1, 5, 2, 6, 7], [-100, 5, -100, 6, 7], [2, 3]).ToList();
        Assert.Equal([[1], [2]], ps.Select(p => p.PromptIds));
        Assert.Equal([[5], [6, 7]], ps.Select(p => p.LabelIds));
    }

    static CausalLM TinyModel(CpuBackend backend) => CausalLM.Create(new TransformerSpec
    {
        Architecture = "qwen3", VocabSize = 40, HiddenSize = 16, IntermediateSize = 32, NumLayers = 1, NumHeads = 2, NumKvHeads = 1,
        HeadDimOverride = 8, QkNorm = true, TieWordEmbeddings = true,
    }, backend, TrainingSetup.Inference, new RandomWeights(4, std: 0.5f));

    [Fact]
    public void Greedy_decoding_appends_the_argmax_of_each_forward()
    {
        using var backend = new CpuBackend(threads: 1);
        using var model = TinyModel(backend);
        int[] prompt = [3, 9, 27];
        var generated = RecomputeDecoder.Generate(model, prompt, new GenerationOptions { MaxNewTokens = 3 });

        var expected = new List<int>();
        var seq = prompt.ToList();
        for (int k = 0; k < 3; k++)
        {
            var logits = model.ForwardLogits(TokenBatch.FromSequences([seq.ToArray()], seq.Count));
            var last = logits.AsSpan((seq.Count - 1) * 40, 40).ToArray();
            int best = Array.IndexOf(last, last.Max());
            expected.Add(best);
            seq.Add(best);
        }
        Assert.Equal(expected, generated);
    }

    [Fact]
    public void A_stop_token_ends_generation_and_is_not_returned()
    {
        using var backend = new CpuBackend(threads: 1);
        using var model = TinyModel(backend);
        int first = RecomputeDecoder.Generate(model, [3, 9, 27], new GenerationOptions { MaxNewTokens = 1 })[0];
        Assert.Empty(RecomputeDecoder.Generate(model, [3, 9, 27], new GenerationOptions { MaxNewTokens = 5, StopTokenIds = [first] }));
    }

    [Fact]
    public void Sampling_with_the_same_seed_repeats()
    {
        using var backend = new CpuBackend(threads: 1);
        using var model = TinyModel(backend);
        var o = new GenerationOptions { MaxNewTokens = 6, DoSample = true, Temperature = 1.5, TopP = 0.9, TopK = 20, Seed = 7 };
        Assert.Equal(RecomputeDecoder.Generate(model, [1, 2], o), RecomputeDecoder.Generate(model, [1, 2], o));
    }
}
