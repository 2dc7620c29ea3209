using FineTune.Engine;
using FineTune.Engine.Collectives;
using FineTune.Models;

namespace FineTune.Training;

/// <summary>
/// Data-parallel training over a <see cref="ICollective"/> (PyTorch DDP's contract, with DeepSpeed's ZeRO-1/2 as options):
/// every rank holds the whole model; a step's global batch of micro-batches (per_device_train_batch_size ×
/// gradient_accumulation_steps × world size) is cut into one contiguous share per rank; the gradients are summed across
/// ranks. Each share's backward is scaled by 1 / (labelled tokens of the whole global step), the normalisation one process
/// uses for that step, so the sum is one process's gradient and the ranks take identical steps.
/// <para>
/// Gradients are reduced in buckets of consecutive parameters (last first, the order the backward finishes them), each
/// copied into one flat buffer, so NCCL or TCP sees a few large messages. With <see cref="Overlap"/> a bucket is reduced
/// as soon as the share's last backward has finished all its gradients (<see cref="LastBackward{T}"/>, from the model's
/// <see cref="CausalLM.GradientsFinished"/> hook): TCP on a worker thread, NCCL enqueued on the backend's stream.
/// </para>
/// <para>
/// ZeRO: each bucket is split into <see cref="WorldSize"/> equal chunks and rank r owns chunk r (DeepSpeed's flat
/// partition); the rank holds AdamW's moments for its chunks only (the model, built with
/// <see cref="TrainingSetup.ShardedOptimizerStates"/>, holds none). Stage 1: gradients all-reduced, each rank runs AdamW on
/// the elements it owns, then the updated master weights are all-gathered. Stage 2: gradients reduce-scattered (each rank
/// receives only the sum of its chunk), the clipping norm summed from the chunks, then as stage 1. Before a checkpoint the
/// moments are all-gathered into host arrays, so the checkpoint has the single-process format and resumes on any world
/// size.
/// </para>
/// <para>
/// Stage 3 (parameters sharded, the model built with <see cref="TrainingSetup.ShardedParameters"/>): the buckets are the
/// model's <see cref="CausalLM.ShardedGroups"/> (a decoder layer each, and the embeddings with the head), each rank holding
/// its chunk of their masters, gradients and moments. The model asks for a group's whole values right before it computes
/// (<see cref="CausalLM.GatherParameters"/>: an all-gather into the group's window) and reports its gradients of every
/// backward (not only the last of a share) through <see cref="CausalLM.GradientsFinished"/>: they are reduce-scattered
/// and added into the owned chunk's gradient. AdamW then steps the owned chunks; nothing is all-gathered after the step,
/// the next forward gathers each group when it needs it. Checkpoints gather the masters as the moments.
/// ZeRO-2 of a model built with <see cref="TrainingSetup.ShardedGradients"/> reduces the same per-layer gradient windows
/// after every backward, while its values and masters stay whole (stepped and all-gathered as stage 1).
/// </para>
/// </summary>
public sealed class DataParallel : IDisposable
{
    /// <summary>Bucket size: DDP's default of 25 MiB of F32 gradients.</summary>
    public const long DefaultBucketElements = 25L << 20 >> 2;

    readonly long _bucketElements;
    CausalLM? _model;
    Bucket[] _buckets = [];
    DeviceBuffer? _scratch, _shards;
    Tensor? _flat, _normSquared, _shardM, _shardV;

    /// <param name="zeroStage">0 (plain data parallel), 1 (optimizer states sharded), 2 (and gradients) or 3 (and parameters).</param>
    /// <param name="overlap">Reduce each bucket as soon as the share's last backward has finished its gradients (see
    /// <see cref="LastBackward{T}"/>), instead of all after the backward; the same bits either way.</param>
    public DataParallel(ICollective collective, int zeroStage = 0, long bucketElements = DefaultBucketElements, bool overlap = true)
    {
        Overlap = overlap;
        if (zeroStage is < 0 or > 3)
            throw new TrainingException($"zero_stage {zeroStage} does not exist: 0 (plain data parallel), 1 (optimizer states sharded), 2 (and gradients) or 3 (and parameters).");
        Collective = collective;
        ZeroStage = zeroStage;
        _bucketElements = Math.Max(1, bucketElements);
    }

    public ICollective Collective { get; }
    public int Rank => Collective.Rank;
    public int WorldSize => Collective.WorldSize;
    public int ZeroStage { get; }
    public bool Overlap { get; }
    /// <summary>Rank 0 writes the outputs, logs and checkpoints; the others write nothing.</summary>
    public bool IsWriter => Rank == 0;

    /// <summary>Buckets reduced (or queued) in the current step, in bucket order; the rest wait for <see cref="ReduceGradients"/>.</summary>
    int _launched;
    int _step;
    /// <summary>The synchronous (TCP) collective's reductions run here, one bucket after another, while the backward goes on.</summary>
    Task _inFlight = Task.CompletedTask;

    /// <summary>One parameter's elements inside a bucket's flat layout.</summary>
    readonly record struct Piece(TrainableParameter Parameter, long Offset);

    /// <summary>
    /// Consecutive parameters reduced as one flat buffer; Chunk = ⌈length / world⌉, rank r owns [r·Chunk, (r+1)·Chunk).
    /// ShardOffset: where this bucket's owned chunk starts in the rank's moment shards (ZeRO: Σ of the earlier chunks).
    /// </summary>
    sealed record Bucket(Piece[] Pieces, long Length, long Chunk, long ShardOffset)
    {
        /// <summary>The backward stage (<see cref="CausalLM.BackwardStage"/>) after which all of this bucket's gradients are final.</summary>
        public int ReadyStage { get; init; }
        /// <summary>The model's group this bucket is (its windows and shards: ZeRO-3, or ZeRO-2 with per-layer gradients); null otherwise.</summary>
        public ShardedGroup? Group { get; init; }
    }

    /// <summary>A parameter's whole AdamW moments on the host (gathered for a checkpoint, or read from one).</summary>
    public sealed record HostMoments(float[] M, float[] V);

    /// <summary>Lays out the buckets of <paramref name="model"/> (once per run) and allocates the flat buffer they share.</summary>
    public void Attach(CausalLM model)
    {
        if (ReferenceEquals(_model, model)) return;
        if (ZeroStage > 0 && model.TrainableParameters.Any(p => p.EightBit is not null))
            throw new TrainingException($"zero_stage {ZeroStage} with an 8-bit optimizer (optim: adamw_8bit) is not implemented: its moments are quantized in blocks of 256, which the flat partition would cut; use zero_stage: 0 or optim: adamw_torch.");
        var sharding = new ParameterSharding(Rank, WorldSize);
        if (ZeroStage == 3 && model.Setup.ShardedParameters != sharding)
            throw new InvalidOperationException($"zero_stage 3: build the model with TrainingSetup.ShardedParameters = (rank {Rank}, world size {WorldSize})");
        if (ZeroStage < 3 && model.Setup.ShardedParameters is not null)
            throw new InvalidOperationException($"zero_stage {ZeroStage}: the model's parameters are sharded (ZeRO-3); build it whole");
        if (ZeroStage == 2 && model.Setup.ShardedGradients is { } gradients && gradients != sharding || ZeroStage < 2 && model.Setup.ShardedGradients is not null)
            throw new InvalidOperationException($"zero_stage {ZeroStage}: TrainingSetup.ShardedGradients is for zero_stage 2 with (rank {Rank}, world size {WorldSize})");
        if (model.ShardedGroups.Count > 0 && model.RouterAuxLossCoef != 0)
            throw new TrainingException($"zero_stage {ZeroStage} with per-layer gradient windows and a mixture of experts' load-balancing loss (moe_aux_loss_coef) is not supported: a rank whose share of a step ends early runs label-free micro-batches, whose aux loss would add gradients; use zero_stage 2 with whole gradients.");
        _model = model;
        var buckets = new List<Bucket>();
        var current = new List<Piece>();
        long length = 0;
        void Close()
        {
            if (current.Count == 0) return;
            long chunk = (length + WorldSize - 1) / WorldSize;
            buckets.Add(new Bucket([.. current], length, chunk, buckets.Sum(b => b.Chunk)) { ReadyStage = current.Max(x => model.BackwardStage(x.Parameter)) });
            current.Clear();
            length = 0;
        }
        if (model.ShardedGroups.Count > 0)
            foreach (var g in model.ShardedGroups)
                buckets.Add(new Bucket([.. g.Parameters.Select(p => new Piece(p, p.Shard!.Offset))], g.Length, g.Chunk, buckets.Sum(b => b.Chunk))
                    { ReadyStage = g.ReadyStage, Group = g });
        else
        {
            foreach (var p in model.TrainableParameters.Reverse())
            {
                if (length > 0 && length + p.Length > _bucketElements) Close();
                current.Add(new Piece(p, length));
                length += p.Length;
            }
            Close();
        }
        _buckets = [.. buckets];
        _launchStages = new int[_buckets.Length];
        // The model's groups reduce in their own gradient windows; the flat buffer is not needed.
        long flat = _buckets.Length == 0 || ReducesEveryBackward ? 1 : _buckets.Max(b => b.Chunk * WorldSize);
        _scratch = model.Backend.AllocateBuffer(4 * (flat + 1));
        _flat = new Tensor(_scratch, 0, DType.F32, [checked((int)flat)], "data_parallel.bucket");
        _normSquared = new Tensor(_scratch, flat, DType.F32, [1], "data_parallel.grad_norm_squared");
        if (ZeroStage > 0)
        {
            // The moments of this rank's chunks only (DeepSpeed's partitioned optimizer states): 8 bytes per owned element,
            // zero at start as AdamW's are; padding past a bucket's end stays zero and is never stepped.
            long owned = Math.Max(1, _buckets.Sum(b => b.Chunk));
            _shards = model.Backend.AllocateBuffer(4 * 2 * owned);
            _shardM = new Tensor(_shards, 0, DType.F32, [checked((int)owned)], "data_parallel.exp_avg_shard");
            _shardV = new Tensor(_shards, owned, DType.F32, [checked((int)owned)], "data_parallel.exp_avg_sq_shard");
            model.Backend.Zero(_shardM);
            model.Backend.Zero(_shardV);
        }
        if (ZeroStage == 3) model.GatherParameters = GatherGroup;
        if (ReducesEveryBackward) model.GradientsFinished = ReduceScatterGroups;
        // On one rank too: the maximum over one rank is its own arena, bit for bit.
        if (model.HasFp8Histories) model.Fp8AmaxReduction = ReduceFp8Amaxes;
    }

    /// <summary>
    /// fp8_scaling: delayed on several ranks: every pass start all-reduces the FP8 amaxes (<see cref="ReduceFp8Amaxes"/>),
    /// so every rank must run the same passes in the same order: the trainer tops a short share up with label-free
    /// micro-batches (as for <see cref="ReducesEveryBackward"/>) and every rank evaluates.
    /// </summary>
    public bool ReducesFp8Amaxes => WorldSize > 1 && Need().HasFp8Histories;

    double[] _fp8Used = [];

    /// <summary>
    /// fp8_scaling: delayed, as each pass's histories advance (<see cref="CausalLM.Fp8AmaxReduction"/>): the sites' arena
    /// all-reduced with the element-wise maximum, and the sites used joined over the ranks (a site used on any rank takes
    /// its scale from the history on every rank). The whole arena is reduced, not only each site's pass amax: the rest
    /// (the history's largest value, the push count, the ring) is already equal on every rank, since every rank has
    /// advanced with the same reduced values since the arena was zeroed, and the maximum of equal values is that value
    /// bit for bit. The push count is an I32 in an F32's bits, a small positive subnormal: the TCP maximum keeps
    /// subnormals, and NCCL is built without flush-to-zero. The pass amaxes are non-negative floats, whose maximum is
    /// exact. One message of 4·(3 + history) bytes per site per pass (1.3 MB at 7B), and the flags as host numbers.
    /// </summary>
    void ReduceFp8Amaxes(Tensor states, bool[] used)
    {
        WaitInFlight(); // TCP: a bucket reduced on the worker thread would share the sockets
        string activity = $"the FP8 amax all-reduce (fp8_scaling: delayed) at step {_step}";
        Collective.AllReduce(states, ReduceOp.Max, activity);
        if (_fp8Used.Length != used.Length) _fp8Used = new double[used.Length];
        for (int i = 0; i < used.Length; i++) _fp8Used[i] = used[i] ? 1 : 0;
        Collective.AllReduceHost(_fp8Used, activity);
        for (int i = 0; i < used.Length; i++) used[i] = _fp8Used[i] > 0;
    }

    /// <summary>
    /// The model holds its gradients one layer at a time (<see cref="CausalLM.ShardedGroups"/>: ZeRO-3, or ZeRO-2 built with
    /// <see cref="TrainingSetup.ShardedGradients"/>): every backward's are reduce-scattered as each layer finishes, so every
    /// rank must run the same number of backwards in a step.
    /// </summary>
    public bool ReducesEveryBackward => Need().ShardedGroups.Count > 0;

    /// <summary>ZeRO-3: the group's whole values into its window, from every rank's chunk of the compute copy.</summary>
    void GatherGroup(ShardedGroup g)
    {
        Collective.AllGather(g.ValueShard, g.Window, $"the parameter all-gather of {g.Name} in step {_step}");
    }

    /// <summary>
    /// ZeRO-3 and ZeRO-2 with per-layer gradients, after each backward stage of every backward: the groups whose gradients
    /// that stage completed are reduce-scattered in their gradient window (each rank receives the ranks' sum of its chunk)
    /// and added into the owned chunk's gradient of the step; the model zeroes the window after this returns.
    /// </summary>
    void ReduceScatterGroups(int stage)
    {
        var backend = Need().Backend;
        for (int i = 0; i < _buckets.Length; i++)
        {
            var b = _buckets[i];
            if (b.ReadyStage != stage) continue;
            var g = b.Group!;
            var own = g.GradWindow.View(Rank * g.Chunk, [checked((int)g.Chunk)]);
            Collective.ReduceScatter(g.GradWindow, own, ReduceOp.Sum, $"the gradient reduce-scatter of {g.Name} in step {_step}");
            backend.Add(g.GradShard, own);
            _launchStages[i] = stage;
        }
    }

    /// <summary>Bytes this rank holds for the trainable parameters: values, gradients and AdamW state (chunks and windows where the model's groups hold them).</summary>
    public (long Parameters, long Gradients, long OptimizerStates) HeldBytes
    {
        get
        {
            var model = Need();
            var (values, grads) = Whole(model);
            return (ZeroStage == 3 ? model.ShardedBytes.Parameters : values, ReducesEveryBackward ? model.ShardedBytes.Gradients : grads, OptimizerStateBytes);
        }
    }

    /// <summary>What one process holds for the same parameters: values (and F32 masters), F32 gradients, F32 moments.</summary>
    public (long Parameters, long Gradients, long OptimizerStates) UnshardedBytes
    {
        get
        {
            var (values, grads) = Whole(Need());
            return (values, grads, FullOptimizerStateBytes);
        }
    }

    static (long Values, long Grads) Whole(CausalLM model)
    {
        long n = model.TrainableParameters.Sum(p => p.Length);
        int compute = model.Backend.ComputeDType.ByteSize();
        return (n * (compute == 4 ? 4 : compute + 4), 4 * n);
    }

    /// <summary>
    /// Bytes of AdamW state this rank holds: the model's own moments (stage 0, or a model built without
    /// <see cref="TrainingSetup.ShardedOptimizerStates"/>) plus, with ZeRO, the moments of the chunks it owns.
    /// </summary>
    public long OptimizerStateBytes => Need().OptimizerStateBytes + (ZeroStage > 0 ? 8 * _buckets.Sum(b => b.Chunk) : 0);

    /// <summary>Bytes of AdamW state of the whole model (F32 moments of every trainable element), as one process holds them.</summary>
    public long FullOptimizerStateBytes => ZeroStage == 0 ? Need().OptimizerStateBytes : 8 * Need().TrainableParameters.Sum(p => p.Length);

    /// <summary>
    /// This rank's share of a global step: micro-batches [rank·perRank, (rank+1)·perRank) of the step (fewer, or none, at
    /// an epoch's end, where the step holds fewer micro-batches).
    /// </summary>
    public IReadOnlyList<StepBatch> Share(IReadOnlyList<StepBatch> step, int perRank) =>
        step.Skip(Rank * perRank).Take(perRank).ToArray();

    /// <summary>Before a step's share: no bucket is reduced yet.</summary>
    public void BeginStep(int step)
    {
        var model = Need();
        _step = step;
        _launched = 0;
        if (ReducesEveryBackward)
            foreach (var b in _buckets) model.Backend.Zero(b.Group!.GradShard);
    }

    /// <summary>
    /// Runs the share's last backward (the one after which the gradients are the share's sum) with the overlap on: each
    /// time the model reports a backward stage done (<see cref="CausalLM.GradientsFinished"/>), the buckets whose
    /// gradients are all final are reduced, in bucket order, while the backward goes on below them. A synchronous
    /// collective (TCP) reduces on a worker thread, one bucket after another through the one flat buffer; NCCL enqueues
    /// on the backend's stream between the layers' kernels (the same stream orders them; see docs/training.md).
    /// Without overlap, or when an objective does not call this, <see cref="ReduceGradients"/> reduces every bucket.
    /// </summary>
    public T LastBackward<T>(Func<T> backward)
    {
        var model = Need();
        if (!Overlap || ReducesEveryBackward) return backward(); // the model's groups are reduced during every backward
        model.GradientsFinished = LaunchReady;
        try { return backward(); }
        finally { model.GradientsFinished = null; }
    }

    void LaunchReady(int stage)
    {
        while (_launched < _buckets.Length && _buckets[_launched].ReadyStage <= stage)
        {
            _launchStages[_launched] = stage;
            Launch(_buckets[_launched++]);
        }
    }

    int[] _launchStages = [];

    /// <summary>
    /// Of the last step, per bucket: the backward stage at which its reduction started (<see cref="int.MaxValue"/>: after
    /// the backward). Shows what the overlap did; the log and the tests read it.
    /// </summary>
    public IReadOnlyList<int> LaunchStages => _launchStages;

    string ReduceActivity => $"the gradient {(ZeroStage >= 2 ? "reduce-scatter" : "all-reduce")} of step {_step}";

    void Launch(Bucket b)
    {
        string activity = ReduceActivity;
        if (!Collective.Synchronous) { Reduce(b, activity); return; }
        var before = _inFlight;
        _inFlight = Task.Factory.StartNew(() =>
        {
            before.GetAwaiter().GetResult(); // one bucket after another: they share the flat buffer and the sockets
            Reduce(b, activity);
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>
    /// Σ over ranks of every gradient (stage 0, 1), or of each rank's own chunk (stage 2): reduces the buckets the
    /// overlapped backward has not, then waits for all.
    /// </summary>
    public void ReduceGradients(int step)
    {
        Need();
        if (_step != step) BeginStep(step);
        string activity = ReduceActivity;
        if (!ReducesEveryBackward)
        {
            try { LaunchReady(int.MaxValue); }
            finally { WaitInFlight(); }
        }
        Collective.Wait(activity);
    }

    void WaitInFlight()
    {
        var inFlight = _inFlight;
        _inFlight = Task.CompletedTask;
        inFlight.GetAwaiter().GetResult();
    }

    /// <summary>One bucket: its gradients into the flat buffer, the collective, the (owned) sums back.</summary>
    void Reduce(Bucket b, string activity)
    {
        var flat = Flat(b);
        Gather(b, flat, p => p.Grad);
        if (ZeroStage == 2)
        {
            var own = flat.View(Rank * b.Chunk, [checked((int)b.Chunk)]);
            Collective.ReduceScatter(flat, own, ReduceOp.Sum, activity);
            Scatter(b, flat, p => p.Grad, ownedOnly: true);
        }
        else
        {
            Collective.AllReduce(flat, ReduceOp.Sum, activity);
            Scatter(b, flat, p => p.Grad, ownedOnly: false);
        }
    }

    /// <summary>
    /// Σ‖g‖² for clipping, on the device: the model's own sum where every rank holds the whole reduced gradient (stage
    /// 0, 1: the same bits as one process's sum of that gradient); stage 2 sums each rank's chunks and adds the ranks.
    /// </summary>
    public Tensor GradNormSquared(int step)
    {
        var model = Need();
        if (ZeroStage < 2) return model.GradNormSquared();
        var backend = model.Backend;
        backend.Zero(_normSquared!);
        backend.SumOfSquaresMany(OwnedGradients(), _normSquared!);
        var host = new float[1];
        backend.Download(_normSquared!, host);
        Span<double> total = [host[0]];
        Collective.AllReduceHost(total, $"the gradient norm of step {step}");
        backend.Upload(_normSquared!, [(float)total[0]]);
        return _normSquared!;
    }

    /// <summary>
    /// The optimizer step: every parameter (stage 0), or AdamW on the elements this rank owns followed by the all-gather
    /// of the updated master weights (stage 1, 2). <paramref name="adamW"/> gives a parameter's hyper-parameters.
    /// </summary>
    public void OptimizerStep(Func<TrainableParameter, AdamWStep> adamW, Tensor gradNormSquared, int step)
    {
        var model = Need();
        if (ZeroStage == 0)
        {
            model.OptimizerStep(adamW, gradNormSquared);
            return;
        }
        var backend = model.Backend;
        // The owned chunks, each an AdamW update of its own (views of the parameter and of this rank's moment shards),
        // stepped in one AdamWMany: one launch on CUDA.
        var chunks = new List<AdamWTensors>();
        var steps = new List<AdamWStep>();
        if (ZeroStage == 3)
        {
            foreach (var b in _buckets)
                foreach (var (p, _, count, shard) in OwnedRanges(b))
                {
                    // The owned chunk's master, gradient and compute copy, at the same place in the group's shards.
                    var g = b.Group!;
                    int n = checked((int)count);
                    long at = shard - b.ShardOffset;
                    var copy = ReferenceEquals(g.ValueShard, g.MasterShard) ? null : g.ValueShard.View(at, [n]);
                    chunks.Add(new(g.MasterShard.View(at, [n]), g.GradShard.View(at, [n]), _shardM!.View(shard, [n]), _shardV!.View(shard, [n]), copy));
                    steps.Add(adamW(p));
                }
            backend.AdamWMany(chunks, steps, gradNormSquared);
            model.ShardsChanged(); // the windows are stale: the next forward gathers the updated chunks
            return;
        }
        foreach (var b in _buckets)
            foreach (var (p, start, count, shard) in OwnedRanges(b))
            {
                int n = checked((int)count);
                var copy = ReferenceEquals(p.Value, p.Master) ? null : p.Value.View(start, [n]);
                // ZeRO-2 with the model's groups: the step's gradient of the owned chunk is the group's gradient chunk.
                var grad = b.Group is { } g ? g.GradShard.View(shard - b.ShardOffset, [n]) : p.Grad.View(start, [n]);
                chunks.Add(new(p.Master.View(start, [n]), grad, _shardM!.View(shard, [n]), _shardV!.View(shard, [n]), copy));
                steps.Add(adamW(p));
            }
        backend.AdamWMany(chunks, steps, gradNormSquared);
        AllGatherOwned(p => p.Master, $"the parameter all-gather of step {step}");
        // The compute copy (BF16 on CUDA) from the gathered masters, on every rank alike.
        foreach (var p in model.TrainableParameters)
            if (!ReferenceEquals(p.Value, p.Master)) backend.Copy(p.Value, p.Master);
    }

    /// <summary>
    /// Before a checkpoint (stage 1, 2, 3): the ranks all-gather their moment shards, one bucket at a time through the flat
    /// buffer (ZeRO-3: the group's gradient window), into host arrays of every parameter, so rank 0 saves them whole (the
    /// single-process format). Null for stage 0, where the model holds its moments. The whole moments exist only here, on
    /// the host, while a checkpoint is written.
    /// </summary>
    public IReadOnlyDictionary<TrainableParameter, HostMoments>? GatherOptimizerStates(int step)
    {
        if (ZeroStage == 0) return null;
        string activity = $"gathering the optimizer moments for the checkpoint of step {step}";
        var m = GatherShards(b => _shardM!.View(b.ShardOffset, [checked((int)b.Chunk)]), activity);
        var v = GatherShards(b => _shardV!.View(b.ShardOffset, [checked((int)b.Chunk)]), activity);
        return m.ToDictionary(kv => kv.Key, kv => new HostMoments(kv.Value, v[kv.Key]));
    }

    /// <summary>
    /// ZeRO-3, before a checkpoint or the output is written (every rank calls it): the master shards all-gathered, one group
    /// at a time, into host arrays of every trainable parameter, which the model's <see cref="CausalLM.ReadParameter"/>
    /// serves until the returned scope is disposed. Null below stage 3, where every rank holds the whole masters.
    /// </summary>
    public IDisposable? GatherParameters(int step)
    {
        if (ZeroStage < 3) return null;
        var model = Need();
        model.GatheredParameters = GatherShards(b => b.Group!.MasterShard, $"gathering the weights for the checkpoint or output of step {step}");
        return new GatheredScope(model);
    }

    sealed class GatheredScope(CausalLM model) : IDisposable
    {
        public void Dispose() => model.GatheredParameters = null;
    }

    /// <summary>Every bucket's chunks of one F32 shard (<paramref name="shardOf"/>) all-gathered and cut into whole host arrays per parameter.</summary>
    Dictionary<TrainableParameter, float[]> GatherShards(Func<Bucket, Tensor> shardOf, string activity)
    {
        var backend = Need().Backend;
        var whole = new Dictionary<TrainableParameter, float[]>();
        var host = Array.Empty<float>();
        foreach (var b in _buckets)
        {
            var flat = Flat(b);
            if (host.Length < flat.Length) host = new float[flat.Length];
            var own = flat.View(Rank * b.Chunk, [checked((int)b.Chunk)]);
            backend.Copy(own, shardOf(b));
            Collective.AllGather(own, flat, activity);
            Collective.Wait(activity);
            backend.Download(flat, host.AsSpan(0, checked((int)flat.Length)));
            if (b.Group is not null) backend.Zero(flat); // a gradient window is zero outside a backward
            foreach (var piece in b.Pieces)
                whole[piece.Parameter] = host.AsSpan(checked((int)piece.Offset), checked((int)piece.Parameter.Length)).ToArray();
        }
        return whole;
    }

    /// <summary>Resuming (stage 1, 2): this rank keeps, of a checkpoint's whole moments, the chunks it owns.</summary>
    public void LoadOptimizerStates(IReadOnlyDictionary<TrainableParameter, HostMoments> whole)
    {
        if (ZeroStage == 0) throw new InvalidOperationException("stage 0 keeps its moments in the model");
        var backend = Need().Backend;
        foreach (var b in _buckets)
            foreach (var (p, start, count, shard) in OwnedRanges(b))
            {
                int n = checked((int)count), s0 = checked((int)start);
                backend.Upload(_shardM!.View(shard, [n]), whole[p].M.AsSpan(s0, n));
                backend.Upload(_shardV!.View(shard, [n]), whole[p].V.AsSpan(s0, n));
            }
    }

    void AllGatherOwned(Func<TrainableParameter, Tensor> tensor, string activity)
    {
        foreach (var b in _buckets)
        {
            var flat = Flat(b);
            Gather(b, flat, tensor);
            Collective.AllGather(flat.View(Rank * b.Chunk, [checked((int)b.Chunk)]), flat, activity);
            Scatter(b, flat, tensor, ownedOnly: false);
            if (b.Group is not null) Need().Backend.Zero(flat); // a gradient window is zero outside a backward
        }
        Collective.Wait(activity);
    }

    CausalLM Need() => _model ?? throw new InvalidOperationException("DataParallel.Attach(model) first");

    Tensor Flat(Bucket b) => b.Group?.GradWindow ?? _flat!.View(0, [checked((int)(b.Chunk * WorldSize))]);

    /// <summary>Copies each piece's tensor into the flat buffer (zero padding past the bucket's end).</summary>
    void Gather(Bucket b, Tensor flat, Func<TrainableParameter, Tensor> tensor)
    {
        var backend = Need().Backend;
        if (flat.Length > b.Length) backend.Zero(flat.View(b.Length, [checked((int)(flat.Length - b.Length))]));
        foreach (var piece in b.Pieces)
        {
            var t = tensor(piece.Parameter);
            backend.Copy(flat.View(piece.Offset, [checked((int)t.Length)]), t.Reshape(checked((int)t.Length)));
        }
    }

    /// <summary>Copies the flat buffer back into each piece's tensor (or only the elements this rank owns).</summary>
    void Scatter(Bucket b, Tensor flat, Func<TrainableParameter, Tensor> tensor, bool ownedOnly)
    {
        var backend = Need().Backend;
        if (!ownedOnly)
        {
            foreach (var piece in b.Pieces)
            {
                var t = tensor(piece.Parameter);
                backend.Copy(t.Reshape(checked((int)t.Length)), flat.View(piece.Offset, [checked((int)t.Length)]));
            }
            return;
        }
        foreach (var (p, start, count, shard) in OwnedRanges(b))
            backend.Copy(tensor(p).View(start, [checked((int)count)]), flat.View(shard - b.ShardOffset + Rank * b.Chunk, [checked((int)count)]));
    }

    /// <summary>
    /// The parts of parameters inside this rank's chunk of a bucket: (parameter, first element, count, where they sit in
    /// the rank's moment shards).
    /// </summary>
    IEnumerable<(TrainableParameter Parameter, long Start, long Count, long Shard)> OwnedRanges(Bucket b)
    {
        long lo = Rank * b.Chunk, hi = Math.Min(b.Length, lo + b.Chunk);
        foreach (var piece in b.Pieces)
        {
            long s = Math.Max(lo, piece.Offset), e = Math.Min(hi, piece.Offset + piece.Parameter.Length);
            if (s < e) yield return (piece.Parameter, s - piece.Offset, e - s, b.ShardOffset + s - lo);
        }
    }

    /// <summary>
    /// The gradients of this rank's elements in the model's parameter order (the order of <see cref="CausalLM.GradNormSquared"/>'s
    /// sum, so that one rank sums exactly as one process does): views of the parameters' gradients (stage 2) or of the
    /// groups' owned gradient chunks (stage 3).
    /// </summary>
    Tensor[] OwnedGradients()
    {
        var order = Need().TrainableParameters.Select((p, i) => (p, i)).ToDictionary(x => x.p, x => x.i);
        return _buckets.SelectMany(b => OwnedRanges(b).Select(r => (b, r))).OrderBy(x => order[x.r.Parameter]).ThenBy(x => x.r.Start)
            .Select(x => x.b.Group is { } g
                ? g.GradShard.View(x.r.Shard - x.b.ShardOffset, [checked((int)x.r.Count)])
                : x.r.Parameter.Grad.View(x.r.Start, [checked((int)x.r.Count)])).ToArray();
    }

    public void Dispose()
    {
        // A backward that failed half-way may leave a reduction in flight; it ends at the collective's time limit at worst.
        try { WaitInFlight(); } catch (Exception) { }
        if (_model is not null)
        {
            _model.GradientsFinished = null;
            _model.GatherParameters = null;
            _model.Fp8AmaxReduction = null;
        }
        _scratch?.Dispose();
        _scratch = null;
        _shards?.Dispose();
        _shards = null;
    }
}
