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

    /// <summary>
    /// Where a decode step's time goes (`bench --generate --profile`), for <paramref name="batch"/> sequences decoding
    /// <paramref name="newTokens"/> tokens: the host phases of the engine's steps on graphs, the device time of one decode
    /// graph replayed back to back, and device milliseconds per kernel per decode step from an eager run timed with events
    /// (eager launches leave gaps the events count, so small kernels read high there; the replay time is the device's).
    /// </summary>
    public static GenerateProfile Profile(CausalLM model, int batch, int promptLength, int newTokens)
    {
        var o = new GenerationEngineOptions
        {
            MaxSequences = batch, MaxModelLength = promptLength + newTokens + 1,
            MaxBatchTokens = Math.Max(batch, Math.Min(16384, batch * promptLength)),
        };
        var options = new GenerationOptions { MaxNewTokens = newTokens };
        int[] Prompt(int i) => [.. Enumerable.Range(0, promptLength).Select(t => PromptToken(i, t, model.Spec.VocabSize))];
        StepTimes times;
        double? replay;
        using (var engine = new GenerationEngine(model, o))
        {
            for (int i = 0; i < batch; i++) engine.Add(new GenerationRequest(Prompt(i), options));
            engine.Step(); // the prefill, outside the phase times
            var before = engine.Times;
            while (engine.Running > 0 && engine.Times.Steps - before.Steps < newTokens - 2) engine.Step();
            var after = engine.Times;
            times = new StepTimes(after.Steps - before.Steps, after.ScheduleTicks - before.ScheduleTicks,
                after.LaunchTicks - before.LaunchTicks, after.PickTicks - before.PickTicks);
            replay = engine.DecodeReplayMs(50);
        }
        var kernels = new Dictionary<string, double>();
        if (model.Backend is FineTune.Engine.Cuda.CudaBackend cuda)
        {
            using var engine = new GenerationEngine(model, o with { CudaGraphs = false });
            for (int i = 0; i < batch; i++) engine.Add(new GenerationRequest(Prompt(i), options));
            engine.Step();
            engine.Step(); // first decode step: kernels compiled, products planned
            cuda.Synchronize();
            cuda.Device.BeginProfile();
            long steps = 0;
            while (engine.Running > 0) { engine.Step(); steps++; }
            foreach (var (op, ms) in cuda.Device.EndProfile()) kernels[op] = ms / Math.Max(1, steps);
        }
        return new GenerateProfile(batch, times.MsPerStep(times.ScheduleTicks), times.MsPerStep(times.LaunchTicks),
            times.MsPerStep(times.PickTicks), replay, kernels);
    }
}

/// <summary>One `bench --generate --profile` row: host milliseconds per decode step by phase, the replayed graph's device time, kernels' eager device time.</summary>
public sealed record GenerateProfile(int Batch, double ScheduleMs, double LaunchMs, double PickMs, double? GraphReplayMs,
    IReadOnlyDictionary<string, double> KernelMs);
