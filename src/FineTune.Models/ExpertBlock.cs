using FineTune.Engine;

namespace FineTune.Models;

/// <summary>
/// A layer's mixture of experts: the router {mlp}.gate [E, hidden] and each projection of all E experts as one stacked
/// parameter (gate and up [E, inter, hidden], down [E, hidden, inter]), so that one grouped product per projection runs
/// every expert over its rows. The stacks are named {mlp}.experts.{gate_proj|up_proj|down_proj} (mixtral: w1, w3, w2)
/// without ".weight"; the files hold one tensor per expert ({mlp}.experts.E.gate_proj.weight), see <see cref="ExpertKey"/>.
/// </summary>
internal sealed class ExpertBlock
{
    public required string Module { get; init; }
    public required Parameter Router { get; init; }
    public required Parameter Gate { get; init; }
    public required Parameter Up { get; init; }
    public required Parameter Down { get; init; }
    public required int TopK { get; init; }
    public required bool NormalizeTopK { get; init; }

    public int Count => Router.Shape[0];
    public int Intermediate => Gate.Shape[1];
    public IEnumerable<Parameter> Parameters => [Router, Gate, Up, Down];
    public bool HasTrainable => Parameters.Any(p => p.IsTrainable);

    /// <summary>The stacked parameter's per-expert tensor name in the files: {mlp}.experts.E.gate_proj.weight.</summary>
    public static string ExpertKey(string stackName, int expert)
    {
        int dot = stackName.LastIndexOf('.');
        return $"{stackName[..dot]}.{expert}.{stackName[(dot + 1)..]}.weight";
    }

    /// <summary>Whether a parameter name is a stacked expert projection of a family with experts.</summary>
    public static bool IsStack(ModelArchitecture family, string name) =>
        family.Experts is { } x && !name.EndsWith(".weight", StringComparison.Ordinal)
        && name.Contains($".{x.ExpertList}.", StringComparison.Ordinal);
}

/// <summary>
/// What the expert blocks keep for their backward, for up to Capacity tokens and k choices each (rows = Capacity·k in
/// expert-sorted order): per set (one per layer the checkpointing plan keeps, one shared by the recomputed layers, one in all without training) the router's logits,
/// probabilities and choices, the sort, the gathered inputs and the experts' gate/up/act/out; shared gradient scratch;
/// and the load-balancing statistics (counts and probability sums per expert over a forward's sparse layers).
/// </summary>
internal sealed class ExpertActivations : IDisposable
{
    internal sealed class Layer
    {
        public Tensor Logits = null!, Probs = null!, TopIdx = null!, TopWeight = null!, Offsets = null!, SortedToken = null!, RowOf = null!;
        public Tensor Xs = null!, Gate = null!, Up = null!, Act = null!, Out = null!;
    }

    private readonly TensorArena _arena;

    public ExpertActivations(IBackend backend, int capacity, int sets, bool training, int hidden, int experts, int topK, int inter)
    {
        Capacity = capacity;
        Training = training;
        var b = new TensorArena.Builder();
        var (handles, grads, counts, probSums, mask) = Declare((name, dt, shape) => b.Add(name, dt, shape), backend.ComputeDType,
            capacity, sets, training, hidden, experts, topK, inter);
        _arena = b.Build(backend);
        Layers = handles.Select(h => new Layer
        {
            Logits = _arena[h[0]], Probs = _arena[h[1]], TopIdx = _arena[h[2]], TopWeight = _arena[h[3]], Offsets = _arena[h[4]],
            SortedToken = _arena[h[5]], RowOf = _arena[h[6]], Xs = _arena[h[7]], Gate = _arena[h[8]], Up = _arena[h[9]], Act = _arena[h[10]], Out = _arena[h[11]],
        }).ToArray();
        if (training)
        {
            Dout = _arena[grads[0]]; Dact = _arena[grads[1]]; Dgate = _arena[grads[2]]; Dup = _arena[grads[3]];
            Dxs = _arena[grads[4]]; DtopWeight = _arena[grads[5]]; Dlogits = _arena[grads[6]];
        }
        Counts = _arena[counts];
        ProbSums = _arena[probSums];
        Mask = _arena[mask];
    }

    /// <summary>The arena's bytes for <paramref name="sets"/> layer sets (exact up to each tensor's alignment): what a checkpointing plan spends on the experts.</summary>
    public static long Bytes(DType computeDType, int capacity, int sets, bool training, int hidden, int experts, int topK, int inter)
    {
        var b = new TensorArena.Builder();
        Declare((name, dt, shape) => b.Add(name, dt, shape), computeDType, capacity, sets, training, hidden, experts, topK, inter);
        return b.ByteLength;
    }

    private static (List<int[]> Sets, int[] Grads, int Counts, int ProbSums, int Mask) Declare(Func<string, DType, int[], int> add, DType f,
        int capacity, int sets, bool training, int hidden, int experts, int topK, int inter)
    {
        int n = capacity, rows = capacity * topK;
        var handles = new List<int[]>();
        for (int s = 0; s < sets; s++)
            handles.Add(
            [
                add($"moe{s}.logits", f, [n, experts]), add($"moe{s}.probs", DType.F32, [n, experts]),
                add($"moe{s}.topidx", DType.I32, [n, topK]), add($"moe{s}.topw", DType.F32, [n, topK]),
                add($"moe{s}.offsets", DType.I32, [experts + 1]), add($"moe{s}.sorted", DType.I32, [rows]), add($"moe{s}.rowof", DType.I32, [rows]),
                add($"moe{s}.xs", f, [rows, hidden]), add($"moe{s}.gate", f, [rows, inter]), add($"moe{s}.up", f, [rows, inter]),
                add($"moe{s}.act", f, [rows, inter]), add($"moe{s}.out", f, [rows, hidden]),
            ]);
        int[] grads = training
            ? [add("moe.dout", f, [rows, hidden]), add("moe.dact", f, [rows, inter]), add("moe.dgate", f, [rows, inter]), add("moe.dup", f, [rows, inter]),
               add("moe.dxs", f, [rows, hidden]), add("moe.dtopw", DType.F32, [n, topK]), add("moe.dlogits", f, [n, experts])]
            : [];
        return (handles, grads, add("moe.counts", DType.F32, [experts]), add("moe.probsums", DType.F32, [experts]), add("moe.mask", DType.F32, [n]));
    }

    public int Capacity { get; }
    public bool Training { get; }
    public Layer[] Layers { get; }
    public Tensor? Dout, Dact, Dgate, Dup, Dxs, DtopWeight, Dlogits;
    public Tensor Counts, ProbSums, Mask;
    public long ByteLength => _arena.ByteLength;

    public void Dispose() => _arena.Dispose();
}
