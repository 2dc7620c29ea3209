using FineTune.Engine;

namespace FineTune.Models.Generation;

/// <summary>
/// The KV cache of the engine as a pool of blocks (vLLM's paged attention): per layer K and V
/// [blocks·blockSize, kv_heads·head_dim] in the compute dtype; a sequence holds a list of blocks (its block table),
/// one more each time it crosses a block boundary, and gives them all back when it finishes, so short sequences take
/// only what they use and more of them fit. Block 0 is never handed out: padding rows and the finished rows of
/// static batching write their throw-away K/V there. Blocks are handed out lowest first, so a run's layout is
/// reproducible. Also the step's input tensor (token ids, positions, table rows, cache rows, logit rows and block
/// tables in one I32 buffer, uploaded in one copy) and the picks.
/// </summary>
internal sealed class PagedKvCache : IDisposable
{
    private readonly TensorArena _arena;
    private readonly SortedSet<int> _free;

    public PagedKvCache(CausalLM model, int sequences, int maxModelLength, int blocks, int blockSize, int maxTokens)
    {
        var s = model.Spec;
        if (blockSize < 1) throw new ArgumentException($"a KV block holds at least one position, got {blockSize}");
        BlockSize = blockSize;
        TableWidth = (maxModelLength + blockSize - 1) / blockSize;
        if (blocks == 0) blocks = checked(sequences * TableWidth + 1);
        if (blocks < TableWidth + 1)
            throw new ArgumentException($"a KV cache of {blocks} blocks of {blockSize} cannot hold one sequence of {maxModelLength} tokens ({TableWidth} blocks, plus the scratch block); give it at least {TableWidth + 1}");
        Blocks = blocks;
        var b = new TensorArena.Builder();
        var hk = new int[s.NumLayers];
        var hv = new int[s.NumLayers];
        long rows = checked((long)blocks * blockSize);
        if (rows * s.KvDim > int.MaxValue) throw new ArgumentException($"a KV cache of {blocks} blocks × {blockSize} positions × {s.KvDim} values per layer is too large; lower the batch, the model length or the cache size");
        for (int l = 0; l < s.NumLayers; l++)
        {
            hk[l] = b.Add($"k_cache{l}", model.Backend.ComputeDType, (int)rows, s.KvDim);
            hv[l] = b.Add($"v_cache{l}", model.Backend.ComputeDType, (int)rows, s.KvDim);
        }
        InputCapacity = StepLayout.Capacity(maxTokens, sequences, TableWidth);
        int hi = b.Add("step_inputs", DType.I32, InputCapacity), hp = b.Add("picks", DType.I32, sequences);
        _arena = b.Build(model.Backend);
        K = hk.Select(h => _arena[h]).ToArray();
        V = hv.Select(h => _arena[h]).ToArray();
        StepInputs = _arena[hi];
        Picks = _arena[hp];
        _free = [.. Enumerable.Range(1, blocks - 1)];
    }

    public int Blocks { get; }
    public int BlockSize { get; }
    /// <summary>Blocks one sequence can hold: the model length in blocks.</summary>
    public int TableWidth { get; }
    public Tensor[] K { get; }
    public Tensor[] V { get; }
    /// <summary>The step's inputs (<see cref="StepLayout"/>), written by one upload.</summary>
    public Tensor StepInputs { get; }
    public int InputCapacity { get; }
    /// <summary>Picks of the step's logit rows.</summary>
    public Tensor Picks { get; }
    public long ByteLength => _arena.ByteLength;
    public int FreeBlocks => _free.Count;

    /// <summary>Blocks that hold <paramref name="positions"/> positions.</summary>
    public int BlocksFor(int positions) => (positions + BlockSize - 1) / BlockSize;

    /// <summary>Grows <paramref name="table"/> to hold <paramref name="positions"/> positions; false (and nothing taken) when the pool is short.</summary>
    public bool TryReserve(List<int> table, int positions)
    {
        int more = BlocksFor(positions) - table.Count;
        if (more <= 0) return true;
        if (more > _free.Count) return false;
        for (int i = 0; i < more; i++)
        {
            int block = _free.Min;
            _free.Remove(block);
            table.Add(block);
        }
        return true;
    }

    /// <summary>Gives every block of <paramref name="table"/> back to the pool.</summary>
    public void Release(List<int> table)
    {
        foreach (int block in table) _free.Add(block);
        table.Clear();
    }

    /// <summary>The cache row of position <paramref name="position"/> of a sequence with <paramref name="table"/>.</summary>
    public int Row(List<int> table, int position) => table[position / BlockSize] * BlockSize + position % BlockSize;

    public void Dispose() => _arena.Dispose();
}

/// <summary>Rows [Start, Start+Count) of a step that use adapter <see cref="Adapter"/> (0 = the model as loaded).</summary>
internal readonly record struct RowGroup(int Adapter, int Start, int Count);

/// <summary>
/// Where a step's inputs sit in its one I32 buffer: ids, positions, table rows and cache rows of the N tokens, the R
/// logit rows, then S block-table rows of W blocks. A step of the same (N, R, S) always has the same offsets, so a
/// CUDA graph captured for it reads its inputs where the next step's upload puts them.
/// </summary>
internal readonly record struct StepLayout(int Tokens, int LogitRows, int TableRows, int TableWidth)
{
    public int Ids => 0;
    public int Positions => Tokens;
    public int Sequences => 2 * Tokens;
    public int CacheRows => 3 * Tokens;
    public int Logits => 4 * Tokens;
    public int Tables => 4 * Tokens + LogitRows;
    public int Length => Tables + TableRows * TableWidth;

    /// <summary>The most any step of an engine needs: every token, a logit row and a table row per sequence.</summary>
    public static int Capacity(int maxTokens, int sequences, int tableWidth) => 4 * maxTokens + sequences + sequences * tableWidth;
}

/// <summary>The flattened tokens of one engine step and the rows whose logits it needs.</summary>
internal sealed class StepBatch
{
    public required StepLayout Layout { get; init; }
    /// <summary>The inputs packed as <see cref="Layout"/> says.</summary>
    public required int[] Inputs { get; init; }
    public required IReadOnlyList<RowGroup> TokenGroups { get; init; }
    public required IReadOnlyList<RowGroup> LogitGroups { get; init; }
    public required int MaxPosition { get; init; }
    /// <summary>
    /// Every token is one running sequence's next token (no prompt chunk), no adapter, padded to a graph bucket: the step
    /// runs on <see cref="DecodeGraphs"/>.
    /// </summary>
    public bool DecodeOnly { get; init; }
    public int Tokens => Layout.Tokens;
    public int LogitRows => Layout.LogitRows;
}
