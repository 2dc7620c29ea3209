using System.Diagnostics;
using FineTune.Engine;

namespace FineTune.Models.Generation;

/// <summary>
/// One `finetune bench --generate` row: <see cref="Prompts"/> prompts of <see cref="PromptLength"/> tokens, each decoded
/// greedily to exactly <see cref="NewTokens"/> tokens (no EOS), at most <see cref="Batch"/> at once on the engine.
/// Time to first token is the mean over the requests admitted at once (no queueing in it); single-stream decode
/// speed is the time between a sequence's first and last token.
/// </summary>
public sealed record GenerateBenchmark(string Device, int Batch, int Prompts, int PromptLength, int NewTokens, double Seconds,
    double PromptsPerSecond, double TokensPerSecond, double TimeToFirstTokenMs, double DecodeTokensPerSecondPerSequence, int CudaGraphs = 0);

public static class GenerationBenchmark
{
    /// <summary>Prompt i, token t: a fixed formula, so tests/device/hf_generate_bench.py feeds the peer the same ids.</summary>
    public static int PromptToken(int i, int t, int vocab) => (int)((17L + 1009L * i + 9176L * t) % vocab);

    /// <summary>One row; <c>CudaGraphs</c> in the result counts the decode graphs the engine recorded (0: eager).</summary>
    public static GenerateBenchmark Run(CausalLM model, int batch, int prompts, int promptLength, int newTokens, bool cudaGraphs = true)
    {
        if (batch < 1 || prompts < 1 || promptLength < 1 || newTokens < 1)
            throw new ArgumentException($"batch, prompts, prompt length and new tokens must be positive (got {batch}, {prompts}, {promptLength}, {newTokens})");
        var o = new GenerationEngineOptions
        {
            MaxSequences = batch,
            MaxModelLength = promptLength + newTokens + 1,
            MaxBatchTokens = Math.Max(batch, Math.Min(16384, batch * promptLength)),
            CudaGraphs = cudaGraphs,
        };
        using var engine = new GenerationEngine(model, o);
        var options = new GenerationOptions { MaxNewTokens = newTokens }; // no EOS ids: every sequence runs to its length
        var first = new double[prompts];
        var last = new double[prompts];
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < prompts; i++)
        {
            int row = i, seen = 0;
            var prompt = Enumerable.Range(0, promptLength).Select(t => PromptToken(row, t, model.Spec.VocabSize)).ToArray();
            engine.Add(new GenerationRequest(prompt, options)
            {
                OnToken = _ =>
                {
                    double now = clock.Elapsed.TotalMilliseconds;
                    if (seen++ == 0) first[row] = now;
                    last[row] = now;
                    return true;
                },
            });
        }
        engine.RunToCompletion();
        model.Backend.Synchronize();
        double seconds = clock.Elapsed.TotalSeconds;
        int admitted = Math.Min(batch, prompts);
        double decode = newTokens > 1 ? Enumerable.Range(0, admitted).Average(i => (newTokens - 1) / ((last[i] - first[i]) / 1000)) : 0;
        return new GenerateBenchmark(model.Backend.Name, batch, prompts, promptLength, newTokens, seconds, prompts / seconds,
            (double)prompts * newTokens / seconds, first.Take(admitted).Average(), decode, engine.GraphStats.Captured);
    }
}
