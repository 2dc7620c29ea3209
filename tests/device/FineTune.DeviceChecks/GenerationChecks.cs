using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Engine.Cuda;
using FineTune.Models;
using FineTune.Models.Generation;

namespace FineTune.DeviceChecks;

/// <summary>
/// The generation engine on the GPU: decode steps replayed as CUDA graphs against the same steps run eagerly, on a
/// scratch Qwen3 model (bf16): three prompts of 5, 9 and 17 tokens decoded to 32 tokens each (greedy, and seeded
/// sampling with top-k / top-p / repetition penalty) on an engine of 4 sequences, so the decode steps run in the
/// padded bucket of 4, then 2 and 1 as sequences finish. Graphs must have been recorded and replayed, and every
/// sequence's tokens must be the eager run's. Then the whole engine (paged cache, device sampling, graphs) on the CUDA
/// backend in F32 against the CPU backend: the same tokens, greedy and seeded sampling. The decode steps' launch modes
/// must not change a token either: programmatic dependent launch with the GEMVs' L2 prefetch (FINETUNE_PDL) against
/// plain launches, graphs and eager, and the split-K attention as one kernel against the split kernel + its combine.
/// </summary>
public static class GenerationChecks
{
    public static void Run(CpuBackend cpu, CudaBackend gpuF32, CudaBackend gpu, List<CheckRow> rows)
    {
        var (qkvBias, outputBias, qkNorm) = TransformerSpec.Variant("qwen3", attentionBias: false);
        var spec = new TransformerSpec
        {
            Architecture = "qwen3", VocabSize = 1024, HiddenSize = 256, IntermediateSize = 512, NumLayers = 3,
            NumHeads = 4, NumKvHeads = 2, RopeTheta = 1e6, MaxPositionEmbeddings = 512, TieWordEmbeddings = true,
            QkvBias = qkvBias, OutputBias = outputBias, QkNorm = qkNorm, RmsNormEps = 1e-6,
        };
        using var model = CausalLM.Create(spec, gpu, TrainingSetup.Inference, new RandomWeights(5, 0.5f));
        using var f32Model = CausalLM.Create(spec, gpuF32, TrainingSetup.Inference, new RandomWeights(5, 0.5f));
        using var cpuModel = CausalLM.Create(spec, cpu, TrainingSetup.Inference, new RandomWeights(5, 0.5f));
        int[][] prompts = [[.. Enumerable.Range(3, 5)], [.. Enumerable.Range(100, 9)], [.. Enumerable.Range(500, 17)]];
        var greedy = new GenerationOptions { MaxNewTokens = 32 };
        var sampled = new GenerationOptions { MaxNewTokens = 32, DoSample = true, Temperature = 0.8, TopK = 40, TopP = 0.9, RepetitionPenalty = 1.2, Seed = 3 };
        foreach (var (name, options) in new[] { ("greedy", greedy), ("sampled", sampled) })
        {
            var (eager, _) = Decode(model, prompts, options, graphs: false);
            var (graphed, stats) = Decode(model, prompts, options, graphs: true);
            bool same = eager.Zip(graphed).All(p => p.First.SequenceEqual(p.Second));
            bool used = stats.Captured > 0 && stats.Replays > 0 && stats.Failure is null;
            Console.WriteLine($"     decode graphs ({name}): {stats.Captured} recorded, {stats.Replays} replays{(stats.Failure is null ? "" : $", off: {stats.Failure}")}; " +
                $"tokens {(same ? "equal" : "differ")}: eager [{string.Join(' ', eager[0].Take(8))} …], graphs [{string.Join(' ', graphed[0].Take(8))} …]");
            rows.Add(new CheckRow($"generate graphs vs eager ({name}, 3×32)", "bf16", "tokens", eager.Sum(e => e.Length), same ? 0 : 1, 0, same, 0));
            rows.Add(new CheckRow($"generate graphs used ({name})", "bf16", "graphs", stats.Replays, used ? 0 : 1, 0, used, 0));
            Console.WriteLine($"{(same ? "ok  " : "FAIL")} bf16  generate graphs vs eager ({name}, 3×32)      tokens");
            Console.WriteLine($"{(used ? "ok  " : "FAIL")} bf16  generate graphs used ({name})                 graphs");

            // The fused decode layers (decode.cu, steps of one or two tokens) against the plain kernels: the same bits, so the same tokens.
            model.FusedDecodeLayers = false;
            var (plainLayers, _) = Decode(model, prompts, options, graphs: true);
            model.FusedDecodeLayers = true;
            bool fusedSame = graphed.Zip(plainLayers).All(p => p.First.SequenceEqual(p.Second));
            Console.WriteLine($"{(fusedSame ? "ok  " : "FAIL")} bf16  generate fused layers vs plain ({name}, 3×32) tokens" +
                (fusedSame ? "" : $": fused [{string.Join(' ', graphed[0].Take(8))} …], plain [{string.Join(' ', plainLayers[0].Take(8))} …]"));
            rows.Add(new CheckRow($"generate fused layers vs plain ({name}, 3×32)", "bf16", "tokens", graphed.Sum(e => e.Length), fusedSame ? 0 : 1, 0, fusedSame, 0));

            bool pdl = gpu.UseDependentLaunch;
            string other = pdl ? "plain launch" : "dependent launch";
            gpu.UseDependentLaunch = !pdl;
            var (otherGraphs, otherStats) = Decode(model, prompts, options, graphs: true);
            var (otherEager, _) = Decode(model, prompts, options, graphs: false);
            gpu.UseDependentLaunch = pdl;
            bool oneKernel = gpu.UseSplitKOneKernel;
            gpu.UseSplitKOneKernel = !oneKernel;
            var (otherAttention, _) = Decode(model, prompts, options, graphs: true);
            gpu.UseSplitKOneKernel = oneKernel;
            bool layer = gpu.UsePersistentLayer;
            gpu.UsePersistentLayer = !layer;
            var (otherLayer, layerStats) = Decode(model, prompts, options, graphs: true);
            gpu.UsePersistentLayer = layer;
            // A graph row counts only if graphs were replayed (a capture that failed would leave eager steps).
            foreach (var (what, tokens, replayed) in new[] { ($"{other}, graphs", otherGraphs, otherStats.Replays > 0 && otherStats.Failure is null),
                         ($"{other}, eager", otherEager, true), (oneKernel ? "split-K attention as split + combine" : "split-K attention in one kernel", otherAttention, true),
                         (layer ? "layers as three operations, graphs" : "layers as one persistent launch, graphs", otherLayer, layerStats.Replays > 0 && layerStats.Failure is null) })
            {
                bool agrees = eager.Zip(tokens).All(p => p.First.SequenceEqual(p.Second)) && replayed;
                string label = $"generate {what} ({name}, 3×32)";
                Console.WriteLine($"{(agrees ? "ok  " : "FAIL")} bf16  {label,-48} tokens" + (agrees ? "" : replayed
                    ? $": [{string.Join(' ', tokens[0].Take(8))} …] against eager [{string.Join(' ', eager[0].Take(8))} …]"
                    : $": no graph replays ({otherStats.Failure})"));
                rows.Add(new CheckRow(label, "bf16", "tokens", tokens.Sum(e => e.Length), agrees ? 0 : 1, 0, agrees, 0));
            }

            var (onCpu, _) = Decode(cpuModel, prompts, options, graphs: false);
            var (onGpu, f32Stats) = Decode(f32Model, prompts, options, graphs: true);
            bool equal = onCpu.Zip(onGpu).All(p => p.First.SequenceEqual(p.Second));
            Console.WriteLine($"{(equal ? "ok  " : "FAIL")} f32   generate engine cuda vs cpu ({name}, 3×32)   tokens ({f32Stats.Replays} graph replays)" +
                (equal ? "" : $": cpu [{string.Join(" | ", onCpu.Select(t => string.Join(' ', t)))}], cuda [{string.Join(" | ", onGpu.Select(t => string.Join(' ', t)))}]"));
            rows.Add(new CheckRow($"generate engine cuda vs cpu ({name}, 3×32)", "f32", "tokens", onCpu.Sum(e => e.Length), equal ? 0 : 1, 0, equal, 0));
        }
    }

    static (int[][] Tokens, (int Captured, long Replays, string? Failure) Stats) Decode(CausalLM model, int[][] prompts, GenerationOptions options, bool graphs)
    {
        var o = new GenerationEngineOptions { MaxSequences = 4, MaxModelLength = 64, MaxBatchTokens = 64, CudaGraphs = graphs };
        using var engine = new GenerationEngine(model, o);
        var results = new int[prompts.Length][];
        for (int i = 0; i < prompts.Length; i++)
        {
            int row = i;
            // Different lengths: sequences finish at different steps, so the buckets change as they go.
            engine.Add(new GenerationRequest(prompts[i], options with { MaxNewTokens = 32 - 8 * i, Seed = options.Seed + i })
            {
                OnFinished = s => results[row] = s.Tokens,
            });
        }
        engine.RunToCompletion();
        return (results, engine.GraphStats);
    }
}
