using FineTune.Engine;

namespace FineTune.Models.Generation;

/// <summary>
/// CUDA graphs of decode steps (vLLM's cudagraph batch sizes): a step whose every token is one running sequence's next
/// token, with no named adapter, is padded to a bucket of 1, 2, 4, 8, 16, … sequences (at most the engine's), and per
/// bucket the step's launches are recorded once and then replayed with one launch. The graph reads its inputs from the
/// step buffer the upload writes (same offsets for the same bucket) and the tensors of the engine's cache and
/// activations, whose addresses live as long as the engine. The first step of a bucket runs eagerly (it compiles the
/// kernels, plans the products and sizes the split-K scratch); the second records. A step that cannot be recorded
/// (an operation that allocates or copies) runs eagerly, and graphs stay off for the engine from then on.
/// Off with <see cref="GenerationEngineOptions.CudaGraphs"/> = false or FINETUNE_CUDA_GRAPHS=0: decode steps are then
/// still padded to their buckets and run eagerly, so graphs on and off compute the same products and give the same
/// tokens.
/// </summary>
internal sealed class DecodeGraphs(CausalLM model, PagedKvCache cache, ModelActivations acts, int maxSequences, bool record) : IDisposable
{
    private readonly Dictionary<int, IDeviceGraph> _graphs = [];
    private readonly HashSet<int> _warm = [];
    private int _ropeVersion = model.RopeVersion;
    private int _expertVersion = model.ExpertBuffersVersion;

    /// <summary>Whether the last capture failed (graphs are then off).</summary>
    public string? Failure { get; private set; }
    public int Captured => _graphs.Count;
    public long Replays { get; private set; }

    /// <summary>
    /// Whether a model can run on graphs at all: a backend that records them, a rope table that never changes once built
    /// at full length.
    /// </summary>
    public static bool Usable(CausalLM model) =>
        model.Backend.SupportsGraphs && model.Spec.RopeScaling?.Type is not ("dynamic" or "longrope");

    /// <summary>Whether the options (and FINETUNE_CUDA_GRAPHS) ask for graphs to be recorded.</summary>
    public static bool Wanted(GenerationEngineOptions options) =>
        options.CudaGraphs && Environment.GetEnvironmentVariable("FINETUNE_CUDA_GRAPHS") != "0";

    /// <summary>The bucket a decode step of <paramref name="sequences"/> rows is padded to.</summary>
    public int Bucket(int sequences)
    {
        int b = 1;
        while (b < sequences) b <<= 1;
        return Math.Min(b, maxSequences);
    }

    /// <summary>Runs a decode step (inputs already uploaded) on its bucket's graph, recording it on the bucket's second step.</summary>
    public Tensor Run(StepBatch step)
    {
        if (_ropeVersion != model.RopeVersion || _expertVersion != model.ExpertBuffersVersion)
        {
            // The rope tables (another forward used a longer length) or the experts' buffers (another forward had more
            // tokens) were rebuilt: recorded graphs name the old ones.
            Dispose();
            _warm.Clear();
            _ropeVersion = model.RopeVersion;
            _expertVersion = model.ExpertBuffersVersion;
        }
        if (!record || Failure is not null) return Kernels(step);
        int bucket = step.Tokens;
        if (_graphs.TryGetValue(bucket, out var graph))
        {
            graph.Launch();
            Replays++;
            return Logits(step);
        }
        if (_warm.Add(bucket)) return Kernels(step);
        var B = model.Backend;
        try { B.BeginGraphCapture(); }
        catch (Exception e)
        {
            Failure = e.Message;
            return Kernels(step);
        }
        Tensor logits;
        try { logits = Kernels(step); }
        catch (Exception e)
        {
            B.EndGraphCapture(discard: true);
            Failure = e.Message;
            return Kernels(step);
        }
        try { graph = B.EndGraphCapture() ?? throw new InvalidOperationException("the backend returned no graph"); }
        catch (Exception e)
        {
            // The recording ended but could not be instantiated: nothing ran, so the step runs eagerly.
            Failure = e.Message;
            return Kernels(step);
        }
        _graphs[bucket] = graph;
        graph.Launch();
        Replays++;
        return logits;
    }

    private Tensor Kernels(StepBatch step) => model.StepKernels(step.Layout, step.TokenGroups, step.LogitGroups, cache, acts, null);

    private Tensor Logits(StepBatch step) => acts.Logits.View(0, [step.LogitRows, model.Spec.VocabSize]);

    public void Dispose()
    {
        foreach (var g in _graphs.Values) g.Dispose();
        _graphs.Clear();
    }
}
