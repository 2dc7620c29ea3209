using FineTune.Engine;

namespace FineTune.Models.Generation;

/// <summary>
/// The KV cache of the engine: per layer K and V [slots·capacity, kv_heads·head_dim] in the compute dtype, slot s at
/// rows [s·capacity, (s+1)·capacity). A sequence owns one slot from admission to finish; a finished sequence's slot is
/// handed to the next waiting one at once, and no other slot moves. Also the small per-step index tensors.
/// </summary>
internal sealed class KvCacheSlots : IDisposable
{
    private readonly TensorArena _arena;
    private readonly SortedSet<int> _free;

    public KvCacheSlots(CausalLM model, int slots, int capacity, int maxTokens)
    {
        var s = model.Spec;
        Slots = slots;
        Capacity = capacity;
        var b = new TensorArena.Builder();
        var hk = new int[s.NumLayers];
        var hv = new int[s.NumLayers];
        long rows = checked((long)slots * capacity);
        if (rows * s.KvDim > int.MaxValue) throw new ArgumentException($"a KV cache of {slots} slots × {capacity} positions × {s.KvDim} values per layer is too large; lower the batch or the model length");
        for (int l = 0; l < s.NumLayers; l++)
        {
            hk[l] = b.Add($"k_cache{l}", model.Backend.ComputeDType, (int)rows, s.KvDim);
            hv[l] = b.Add($"v_cache{l}", model.Backend.ComputeDType, (int)rows, s.KvDim);
        }
        int hs = b.Add("token_slots", DType.I32, maxTokens), hr = b.Add("token_rows", DType.I32, maxTokens), hp = b.Add("picks", DType.I32, slots);
        _arena = b.Build(model.Backend);
        K = hk.Select(h => _arena[h]).ToArray();
        V = hv.Select(h => _arena[h]).ToArray();
        TokenSlots = _arena[hs];
        TokenRows = _arena[hr];
        Picks = _arena[hp];
        _free = [.. Enumerable.Range(0, slots)];
    }

    public int Slots { get; }
    public int Capacity { get; }
    public Tensor[] K { get; }
    public Tensor[] V { get; }
    /// <summary>Per step token: its slot, and its cache row slot·capacity + position.</summary>
    public Tensor TokenSlots { get; }
    public Tensor TokenRows { get; }
    /// <summary>Greedy picks of the step's logit rows.</summary>
    public Tensor Picks { get; }
    public long ByteLength => _arena.ByteLength;
    public int FreeSlots => _free.Count;

    /// <summary>The lowest free slot (so a run's slot assignment is reproducible).</summary>
    public int Take()
    {
        int slot = _free.Min;
        _free.Remove(slot);
        return slot;
    }

    public void Release(int slot) => _free.Add(slot);

    public void Dispose() => _arena.Dispose();
}

/// <summary>Rows [Start, Start+Count) of a step that use adapter <see cref="Adapter"/> (0 = the model as loaded).</summary>
internal readonly record struct RowGroup(int Adapter, int Start, int Count);

/// <summary>The flattened tokens of one engine step and the rows whose logits it needs.</summary>
internal sealed class StepBatch
{
    public required int[] Ids { get; init; }
    public required int[] Positions { get; init; }
    public required int[] Slots { get; init; }
    public required int[] CacheRows { get; init; }
    public required int[] LogitRows { get; init; }
    public required IReadOnlyList<RowGroup> TokenGroups { get; init; }
    public required IReadOnlyList<RowGroup> LogitGroups { get; init; }
    public int Tokens => Ids.Length;
    public int MaxPosition => Positions.Max();
}
