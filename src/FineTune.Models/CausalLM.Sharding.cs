using FineTune.Engine;

namespace FineTune.Models;

/// <summary>
/// ZeRO-3 (<see cref="TrainingSetup.ShardedParameters"/>): trainable parameters gathered together — one decoder layer's,
/// or the embeddings' with the final norm, the LM head and the value head — laid out flat in model order (each tensor at a
/// multiple of <see cref="CausalLM.ShardAlignment"/> elements) and padded to <see cref="Chunk"/> × world; rank r owns elements [r·Chunk, (r+1)·Chunk) of that layout. The rank holds only its chunk
/// (<see cref="MasterShard"/>, <see cref="ValueShard"/>, <see cref="GradShard"/>); the parameters' Value and Grad are
/// views of <see cref="Window"/> and <see cref="GradWindow"/>, which every layer group shares (the embeddings' group has
/// its own pair), valid while the group is gathered.
/// </summary>
public sealed class ShardedGroup
{
    internal ShardedGroup(string name, int layer, int readyStage, bool shardsValues)
    {
        Name = name;
        Layer = layer;
        ReadyStage = readyStage;
        ShardsValues = shardsValues;
    }

    /// <summary>
    /// ZeRO-3: the values are sharded too (windows and master/value chunks). False under ZeRO-2's sharded gradients, where
    /// only <see cref="GradWindow"/> and <see cref="GradShard"/> exist and the parameters' values and masters are whole.
    /// </summary>
    public bool ShardsValues { get; }

    /// <summary>"layer 3", or "embeddings and head".</summary>
    public string Name { get; }
    /// <summary>The <see cref="CausalLM.GradientsFinished"/> stage after which a backward's gradients of this group are complete.</summary>
    public int ReadyStage { get; }
    /// <summary>The decoder layer whose parameters these are; −1 for the embeddings and head.</summary>
    internal int Layer { get; }
    /// <summary>Which window pair the group uses: 0 the embeddings', 1 the one the layers share.</summary>
    internal int Slot => Layer < 0 ? 0 : 1;
    /// <summary>The group's parameters in layout order; each one's <see cref="TrainableParameter.Shard"/> gives its offset.</summary>
    public IReadOnlyList<TrainableParameter> Parameters => _parameters;
    internal readonly List<TrainableParameter> _parameters = [];
    internal readonly List<(Parameter Parameter, long Offset)> _planned = [];
    /// <summary>Elements of the layout up to the last tensor's end (the gaps between tensors included, the padding not).</summary>
    public long Length { get; internal set; }
    /// <summary>⌈Length / world⌉ rounded up to a multiple of <see cref="CausalLM.ShardAlignment"/>: the elements each rank owns.</summary>
    public long Chunk { get; internal set; }
    /// <summary>Compute dtype [Chunk·world]: the whole values while the group is gathered (an all-gather of the ranks' ValueShards); ZeRO-3 only.</summary>
    public Tensor Window { get; internal set; } = null!;
    /// <summary>F32 [Chunk·world]: one backward's gradients of the group, zero outside that backward.</summary>
    public Tensor GradWindow { get; internal set; } = null!;
    /// <summary>F32 [Chunk]: the owned chunk of the master weights (padding past Length stays zero); ZeRO-3 only.</summary>
    public Tensor MasterShard { get; internal set; } = null!;
    /// <summary>Compute dtype [Chunk]: the owned chunk of the compute copy (the master shard itself when computing in F32); ZeRO-3 only.</summary>
    public Tensor ValueShard { get; internal set; } = null!;
    /// <summary>F32 [Chunk]: the step's gradient of the owned chunk (the micro-batches' reduce-scatters added up).</summary>
    public Tensor GradShard { get; internal set; } = null!;
}

public sealed partial class CausalLM
{
    private readonly ShardedGroup[] _shardedGroups = [];
    /// <summary>Per decoder layer its group (null: nothing trainable in it, or no sharding); the embeddings' group apart.</summary>
    private readonly ShardedGroup?[] _layerGroups = [];
    private readonly ShardedGroup? _outerGroup;
    /// <summary>Per window slot, the group whose values it holds now (null: stale).</summary>
    private readonly ShardedGroup?[] _gathered = new ShardedGroup?[2];

    /// <summary>ZeRO-3's groups in model order (the embeddings' first, then layer 0 …); empty when the model holds its parameters whole.</summary>
    public IReadOnlyList<ShardedGroup> ShardedGroups => _shardedGroups;

    /// <summary>
    /// ZeRO-3's seam, set by the data-parallel trainer: fills the group's <see cref="ShardedGroup.Window"/> with the whole
    /// values of its parameters (the ranks' <see cref="ShardedGroup.ValueShard"/>s all-gathered). The model calls it right
    /// before a group computes — a layer's forward, its recompute or backward, the embeddings and head once per pass — unless
    /// the window still holds that group unchanged. A group's gradients are reduced through <see cref="GradientsFinished"/>
    /// at its <see cref="ShardedGroup.ReadyStage"/>, after which the model zeroes its gradient window.
    /// </summary>
    public Action<ShardedGroup>? GatherParameters { get; set; }

    /// <summary>
    /// ZeRO-3: whole host copies of the trainable parameters while a checkpoint or the output is written (gathered by the
    /// data-parallel trainer); <see cref="ReadParameter"/> reads them. Null otherwise.
    /// </summary>
    public IReadOnlyDictionary<TrainableParameter, float[]>? GatheredParameters { get; set; }

    /// <summary>After the shards changed (an optimizer step, a checkpoint loaded): every window's values are stale.</summary>
    public void ShardsChanged() => Array.Clear(_gathered);

    /// <summary>
    /// Bytes this rank holds in <see cref="ShardedGroups"/>: values (ZeRO-3's windows and shards; 0 with ZeRO-2's sharded
    /// gradients, whose values are whole) and gradients (windows and shards).
    /// </summary>
    public (long Parameters, long Gradients) ShardedBytes
    {
        get
        {
            long values = 0, grads = 0;
            foreach (var window in _shardedGroups.GroupBy(g => g.Slot).Select(s => s.MaxBy(g => g.GradWindow.Length)!))
            {
                values += Bytes(window.Window);
                grads += Bytes(window.GradWindow);
            }
            foreach (var g in _shardedGroups)
            {
                values += Bytes(g.MasterShard) + (ReferenceEquals(g.ValueShard, g.MasterShard) ? 0 : Bytes(g.ValueShard));
                grads += Bytes(g.GradShard);
            }
            return (values, grads);
            static long Bytes(Tensor? t) => t is null ? 0 : t.Length * t.DType.ByteSize();
        }
    }

    /// <summary>Elements each tensor's place in a group's layout and each rank's chunk are a multiple of.</summary>
    public const int ShardAlignment = 64;

    /// <summary>Generation, merging and other whole-model paths: refused while the parameters are sharded.</summary>
    private void RequireWholeParameters(string what)
    {
        if (Setup.ShardedParameters is not null)
            throw new NotSupportedException($"{what} needs the whole model; under ZeRO-3 (zero_stage: 3) each rank holds only its chunk of the trained weights — run it on the saved model.");
    }

    /// <summary>What ZeRO-3 does not shard yet, refused when the model is built.</summary>
    private static void CheckShardable(TrainingSetup setup)
    {
        if (setup.FinetuningType == FinetuningType.Lora)
            throw new NotSupportedException("ZeRO-3 (and ZeRO-2's per-layer gradients) shard the weights of full and freeze fine-tuning; LoRA's adapters are small and its base is frozen whole: use zero_stage 2 with whole gradients for LoRA.");
        if (setup.Quantization is not null || setup.Fp8)
            throw new NotSupportedException("ZeRO-3 (zero_stage: 3) with a quantized or fp8 base is not supported: use zero_stage 2.");
        if (setup.EightBitOptimizerStates)
            throw new NotSupportedException("ZeRO-3 (zero_stage: 3) with an 8-bit optimizer (optim: adamw_8bit) is not supported: its moments are quantized in blocks of 256, which the flat partition would cut; use optim: adamw_torch.");
    }

    /// <summary>
    /// Plans ZeRO-3's groups, windows and shards in the arena: one group per decoder layer with trainable parameters and one
    /// for everything else (embeddings, final norm, LM head, value head), each laid out flat in model order.
    /// </summary>
    private static (List<ShardedGroup> Groups, Dictionary<ShardedGroup, (int Master, int Value, int Grad)> Shards, int[] Windows)
        PlanShards(TensorArena.Builder builder, IBackend backend, IReadOnlyList<Parameter> parameters, DecoderLayer[] layers,
            ISet<string> trainable, ParameterSharding sharding, bool values)
    {
        int world = sharding.WorldSize, numLayers = layers.Length;
        var layerOf = new Dictionary<Parameter, int>();
        foreach (var layer in layers)
            foreach (var q in layer.Parameters) layerOf[q.ViewOf?.Source ?? q] = layer.Index;
        var outer = new ShardedGroup("embeddings and head", -1, numLayers + 1, values);
        var perLayer = layers.Select(l => new ShardedGroup($"layer {l.Index}", l.Index, numLayers - l.Index, values)).ToArray();
        // Every tensor and every chunk starts at a multiple of 64 elements (128 bytes in bf16), so that views of the windows
        // and shards keep the alignment the vectorised kernels and cuBLASLt look for; the gaps stay zero and unread.
        static long Aligned(long elements) => (elements + ShardAlignment - 1) / ShardAlignment * ShardAlignment;
        foreach (var p in parameters.Where(p => trainable.Contains(p.Name)))
        {
            var g = layerOf.TryGetValue(p, out int l) ? perLayer[l] : outer;
            long offset = Aligned(g.Length);
            g._planned.Add((p, offset));
            g.Length = offset + p.Length;
        }
        var groups = new[] { outer }.Concat(perLayer).Where(g => g.Length > 0).ToList();
        var shards = new Dictionary<ShardedGroup, (int, int, int)>();
        bool separate = backend.ComputeDType != DType.F32;
        foreach (var g in groups)
        {
            g.Chunk = Aligned((g.Length + world - 1) / world);
            int chunk = checked((int)g.Chunk);
            int master = values ? builder.Add($"zero3.{g.Name}.master_shard", DType.F32, chunk) : -1;
            int value = values && separate ? builder.Add($"zero3.{g.Name}.value_shard", backend.ComputeDType, chunk) : master;
            shards[g] = (master, value, builder.Add($"zero3.{g.Name}.grad_shard", DType.F32, chunk));
        }
        var windows = new int[4];
        for (int slot = 0; slot < 2; slot++)
        {
            long size = groups.Where(g => g.Slot == slot).Select(g => g.Chunk * world).DefaultIfEmpty(0).Max();
            string name = slot == 0 ? "zero3.outer" : "zero3.layer";
            windows[2 * slot] = size == 0 || !values ? -1 : builder.Add(name + "_window", backend.ComputeDType, checked((int)size));
            windows[2 * slot + 1] = size == 0 ? -1 : builder.Add(name + "_grad_window", DType.F32, checked((int)size));
        }
        return (groups, shards, windows);
    }

    /// <summary>After the arena is built: each group's window views and shards, each planned parameter's place.</summary>
    private Dictionary<Parameter, ParameterShard> BindShards(List<ShardedGroup> groups, Dictionary<ShardedGroup, (int Master, int Value, int Grad)> shards, int[] windows)
    {
        int world = (Setup.ShardedParameters ?? Setup.ShardedGradients)!.WorldSize;
        var places = new Dictionary<Parameter, ParameterShard>();
        foreach (var g in groups)
        {
            int padded = checked((int)(g.Chunk * world));
            g.GradWindow = _weights[windows[2 * g.Slot + 1]].View(0, [padded], $"zero3.{g.Name}.grad_window");
            g.GradShard = _weights[shards[g].Grad];
            Backend.Zero(g.GradWindow);
            Backend.Zero(g.GradShard);
            if (g.ShardsValues)
            {
                g.Window = _weights[windows[2 * g.Slot]].View(0, [padded], $"zero3.{g.Name}.window");
                (g.MasterShard, g.ValueShard) = (_weights[shards[g].Master], _weights[shards[g].Value]);
                Backend.Zero(g.Window);
                Backend.Zero(g.MasterShard);
                Backend.Zero(g.ValueShard);
            }
            foreach (var (p, offset) in g._planned) places[p] = new ParameterShard(g, offset);
        }
        return places;
    }

    /// <summary>Right before <paramref name="group"/> computes: its whole values in its window (gathered unless they already are).</summary>
    private void Gather(ShardedGroup? group)
    {
        if (group is not { ShardsValues: true } || ReferenceEquals(_gathered[group.Slot], group)) return;
        var gather = GatherParameters ?? throw new InvalidOperationException(
            $"{group.Name}: the model's parameters are sharded (ZeRO-3); train it through DataParallel, which gathers them.");
        _gathered[group.Slot] = null;
        gather(group);
        _gathered[group.Slot] = group;
    }

    /// <summary>After <paramref name="group"/>'s gradients were handed on (<see cref="GradientsFinished"/>): its gradient window back to zero for the next backward.</summary>
    private void ReleaseGradients(ShardedGroup? group)
    {
        if (group is not null) Backend.Zero(group.GradWindow);
    }

    private ShardedGroup? LayerGroup(int layer) => _layerGroups.Length == 0 ? null : _layerGroups[layer];

    /// <summary>
    /// Sets a trainable parameter's F32 master (and compute copy) from whole host values: the tensors themselves, or under
    /// ZeRO-3 the part of them in this rank's chunk (loading, resuming).
    /// </summary>
    public void LoadMaster(TrainableParameter p, ReadOnlySpan<float> values)
    {
        if (p.Shard is not { Group.ShardsValues: true } place)
        {
            Backend.Upload(p.Master, values);
            if (!ReferenceEquals(p.Value, p.Master)) Backend.Copy(p.Value, p.Master);
            return;
        }
        var g = place.Group;
        long lo = Setup.ShardedParameters!.Rank * g.Chunk;
        long s = Math.Max(lo, place.Offset), e = Math.Min(lo + g.Chunk, place.Offset + p.Length);
        if (s < e)
        {
            int count = checked((int)(e - s)), from = checked((int)(s - place.Offset));
            var master = g.MasterShard.View(s - lo, [count]);
            Backend.Upload(master, values.Slice(from, count));
            if (!ReferenceEquals(g.ValueShard, g.MasterShard)) Backend.Copy(g.ValueShard.View(s - lo, [count]), master);
        }
        ShardsChanged();
    }
}
