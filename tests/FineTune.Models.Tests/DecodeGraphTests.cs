using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Models.Generation;

namespace FineTune.Models.Tests;

/// <summary>
/// The engine's decode graphs on a backend that records them (the CPU backend behind <see cref="RecordingBackend"/>):
/// decode steps padded to buckets, recorded on a bucket's second step and replayed with each step's new inputs.
/// </summary>
public sealed class DecodeGraphTests
{
    private static readonly int[][] Prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11], [12], [13, 14, 15]];

    private static (int[][] Tokens, (int Captured, long Replays, string? Failure) Stats, RecordingBackend Backend) Run(bool graphs, GenerationOptions o, int slots,
        TransformerSpec? spec = null, int[][]? prompts = null)
    {
        prompts ??= Prompts;
        var backend = new RecordingBackend(new CpuBackend(2));
        using var model = CausalLM.Create(spec ?? TinyModels.Spec("qwen3", true), backend, TrainingSetup.Inference, new RandomWeights(1, 0.5f));
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = slots, MaxModelLength = 40, MaxBatchTokens = 64, CudaGraphs = graphs });
        var results = new int[prompts.Length][];
        for (int i = 0; i < prompts.Length; i++)
        {
            int row = i;
            // Different lengths: sequences finish at different steps, so the running count crosses buckets.
            engine.Add(new GenerationRequest(prompts[i], o with { MaxNewTokens = 4 + 3 * i, Seed = 9 + i }) { OnFinished = s => results[row] = s.Tokens });
        }
        engine.RunToCompletion();
        return (results, engine.GraphStats, backend);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReplayedDecodeStepsGiveTheTokensOfEagerPaddedSteps(bool sample)
    {
        var o = sample ? new GenerationOptions { DoSample = true, Temperature = 1.1, TopK = 12, TopP = 0.9, RepetitionPenalty = 1.2 } : new GenerationOptions();
        var eager = Run(graphs: false, o, slots: 4);
        var replayed = Run(graphs: true, o, slots: 4);
        Assert.Equal(0, eager.Stats.Captured);
        Assert.Null(replayed.Stats.Failure);
        // Buckets of 4, 2 and 1 sequences, each recorded once; most decode steps are replays.
        Assert.Equal(3, replayed.Stats.Captured);
        Assert.Equal(3, replayed.Backend.Recorded);
        Assert.True(replayed.Stats.Replays > 10, $"{replayed.Stats.Replays} replays");
        Assert.Equal(replayed.Stats.Replays, replayed.Backend.Launches);
        for (int i = 0; i < Prompts.Length; i++) Assert.Equal(eager.Tokens[i], replayed.Tokens[i]);
    }

    [Fact]
    public void ReplayedDecodeStepsOfAMoeModelGiveTheTokensOfEagerStepsAfterALongerPromptArrives()
    {
        // The last prompt starts after the first decode graphs were recorded and its prefill has more tokens than any
        // step before it: the experts' buffers the graphs recorded must still be the ones the model uses.
        int[][] prompts = [[1, 2], [3], [4, 5], [6], [.. Enumerable.Range(7, 24)]];
        var spec = MoeTests.Spec("qwen3_moe");
        var eager = Run(graphs: false, new GenerationOptions(), slots: 4, spec, prompts);
        var replayed = Run(graphs: true, new GenerationOptions(), slots: 4, spec, prompts);
        Assert.Null(replayed.Stats.Failure);
        Assert.True(replayed.Stats.Replays > 10, $"{replayed.Stats.Replays} replays");
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(eager.Tokens[i], replayed.Tokens[i]);
    }

    [Fact]
    public void A_forward_of_more_tokens_than_the_engine_holds_between_runs_leaves_a_moe_models_decode_graphs_correct()
    {
        // ForwardLogits of 80 tokens (more than the engine's 64) rebuilds the experts' buffers; the graphs recorded before
        // it name the old ones and must be recorded again.
        var spec = MoeTests.Spec("qwen3_moe");
        int[][] prompts = [[1, 2], [3], [4, 5]];
        var bigger = TokenBatch.FromSequences([[.. Enumerable.Range(0, 40).Select(t => t % 30)], [.. Enumerable.Range(0, 40).Select(t => (t + 7) % 30)]], 40);
        int[][] Twice(bool graphs, out RecordingBackend backend)
        {
            backend = new RecordingBackend(new CpuBackend(2));
            using var model = CausalLM.Create(spec, backend, TrainingSetup.Inference, new RandomWeights(1, 0.5f));
            using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = 4, MaxModelLength = 40, MaxBatchTokens = 64, CudaGraphs = graphs });
            var results = new int[2 * prompts.Length][];
            for (int round = 0; round < 2; round++)
            {
                for (int i = 0; i < prompts.Length; i++)
                {
                    int row = round * prompts.Length + i;
                    engine.Add(new GenerationRequest(prompts[i], new GenerationOptions { MaxNewTokens = 6 + 2 * i }) { OnFinished = s => results[row] = s.Tokens });
                }
                engine.RunToCompletion();
                if (round == 0) model.ForwardLogits(bigger);
            }
            return results;
        }
        var eager = Twice(graphs: false, out _);
        var replayed = Twice(graphs: true, out var recording);
        Assert.True(recording.Launches > 10, $"{recording.Launches} replays");
        for (int i = 0; i < eager.Length; i++) Assert.Equal(eager[i], replayed[i]);
    }

    [Fact]
    public void PaddedGreedyDecodeGivesEachPromptItsAloneTokens()
    {
        // Pad rows write only the scratch block and read nothing of the real sequences: each prompt decodes as alone.
        using var plain = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.5f);
        var alone = Prompts.Select((p, i) => plain.Generate([p], new GenerationOptions { MaxNewTokens = 4 + 3 * i })[0].Tokens).ToList();
        var replayed = Run(graphs: true, new GenerationOptions(), slots: 4);
        for (int i = 0; i < Prompts.Length; i++) Assert.Equal(alone[i], replayed.Tokens[i]);
    }
}
