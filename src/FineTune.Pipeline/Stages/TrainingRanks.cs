using System.Globalization;
using System.Text.Json;
using FineTune.Engine;
using FineTune.Engine.Collectives;
using FineTune.Engine.Cuda;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline;

/// <summary>
/// The processes of a several-process run (`finetune run --nproc-per-node N`, torchrun, Slurm, Kubeflow), as the pipeline
/// sees them. Every rank runs `finetune run` on the same pipeline; rank 0 runs the stages, and when it reaches a train
/// stage that must run it sends the other ranks a <see cref="TrainJob"/> (the stage's name and its upstream outputs,
/// which live in the same cache or a shared filesystem), and all train it together; the others write nothing. At the end
/// rank 0 tells them the run is over. The control messages, host sums and the CPU ranks' collectives use one TCP group of
/// torchrun's rendezvous; a GPU train stage opens NCCL over it.
/// </summary>
public sealed class TrainingRanks : IDisposable
{
    /// <summary>Seconds any rank waits for another inside training before it gives up (HF's ddp_timeout default: 1800).</summary>
    public const string TimeoutVariable = "FINETUNE_DDP_TIMEOUT";

    /// <summary>Test hook: "RANK:STEP" kills that rank with SIGKILL right after that step, as a node failure or the OOM killer would.</summary>
    public const string FaultVariable = "FINETUNE_FAULT_KILL";

    public Rendezvous Rendezvous { get; }
    public TcpCollective Control { get; }
    public int Rank => Rendezvous.Rank;
    public int WorldSize => Rendezvous.WorldSize;

    TrainingRanks(Rendezvous rendezvous, TcpCollective control)
    {
        Rendezvous = rendezvous;
        Control = control;
    }

    /// <summary>The group of this process when WORLD_SIZE is set (even to 1: the NCCL path on one GPU); null otherwise.</summary>
    public static TrainingRanks? FromEnvironment(Func<string, string?>? environment = null)
    {
        var env = environment ?? Environment.GetEnvironmentVariable;
        if (Rendezvous.FromEnvironment(env) is not { } rv) return null;
        double seconds = 1800;
        if (env(TimeoutVariable) is { Length: > 0 } text && (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out seconds) || seconds <= 0))
            throw new PipelineUserException($"{TimeoutVariable}={text} is not a positive number of seconds.");
        return new TrainingRanks(rv, TcpCollective.Connect(rv, TimeSpan.FromSeconds(seconds)));
    }

    /// <summary>
    /// The pipeline as every rank trains it: each train stage's gradient_accumulation_steps (per rank, as in the HF
    /// Trainer) times the world size, the micro-batches of one optimizer step over all ranks. So the fingerprint, the lock
    /// and the checkpoint folder are those of one process with the same global batch, and that process's checkpoints resume here.
    /// </summary>
    public LoadedPipeline Scale(LoadedPipeline loaded)
    {
        if (WorldSize == 1) return loaded;
        var stages = loaded.Definition.Stages;
        foreach (var stage in stages.OfKind(StageKind.Train))
            if (stage.Block is TrainConfig t)
                stages = stages.With(stage with { Block = t with { GradientAccumulationSteps = t.GradientAccumulationSteps * WorldSize } });
        return loaded with { Definition = loaded.Definition with { Stages = stages } };
    }

    /// <summary>Rank 0: the other ranks are to train this stage now.</summary>
    public void Send(TrainJob job)
    {
        if (Rank != 0) throw new InvalidOperationException("only rank 0 sends train jobs");
        Control.BroadcastBytes(JsonSerializer.SerializeToUtf8Bytes(job), $"sending train stage {job.Stage} to the other ranks");
    }

    /// <summary>Rank 0: the run is over, the other ranks may exit.</summary>
    public void Finish()
    {
        if (Rank == 0) Control.BroadcastBytes(JsonSerializer.SerializeToUtf8Bytes(new TrainJob("", new Dictionary<StageKind, string>(), null, "")), "ending the run");
    }

    /// <summary>The other ranks: the next stage to train, or null when rank 0 has finished the run. Waits without a time limit.</summary>
    public TrainJob? Receive()
    {
        var bytes = Control.BroadcastBytes(null, $"rank {Rank} waiting for rank 0's next train stage", untimed: true);
        var job = JsonSerializer.Deserialize<TrainJob>(bytes) ?? throw new CollectiveException($"rank {Rank}: rank 0 sent an empty train job.");
        return job.Stage.Length == 0 ? null : job;
    }

    /// <summary>
    /// The backend of this rank for a train block: the CPU (with the machine's cores shared among its local ranks), or GPU
    /// devices[local rank] (auto: GPU local rank; device: auto falls back to the CPU where there is no GPU).
    /// </summary>
    public IBackend CreateBackend(TrainConfig cfg, string stage, Action<string> notice)
    {
        var spec = DeviceSpec.Parse(cfg.Device);
        int cpuThreads = Math.Max(1, Environment.ProcessorCount / Rendezvous.LocalWorldSize);
        if (spec.Kind == DeviceKind.Cpu) return Backends.Create("cpu", cpuThreads);
        int ordinal = Ordinal(cfg, stage, spec);
        if (spec.Kind == DeviceKind.Cuda) return StageBackends.Create($"cuda:{ordinal}", stage, notice);
        try { return new CudaBackend(ordinal); }
        catch (CudaUnavailableException e)
        {
            if (Rank == 0) notice($"device: auto → cpu ({e.Message})");
            return Backends.Create("cpu", cpuThreads);
        }
    }

    int Ordinal(TrainConfig cfg, string stage, DeviceSpec spec)
    {
        int local = Rendezvous.LocalRank;
        if (cfg.Devices is not { Count: > 0 } devices || devices is ["auto"])
            return spec.Kind == DeviceKind.Cuda && Rendezvous.LocalWorldSize == 1 ? spec.Ordinal : local;
        if (devices.Count < Rendezvous.LocalWorldSize)
            throw new PipelineUserException($"stages.{stage}.devices lists {devices.Count} GPU(s) ({string.Join(", ", devices)}), but {Rendezvous.LocalWorldSize} ranks run on this machine; list one GPU per rank or lower --nproc-per-node.");
        var text = devices[local];
        if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int ordinal))
            throw new PipelineUserException($"stages.{stage}.devices: '{text}' is not a GPU index; write auto or a list of GPU indices such as [0, 1].");
        return ordinal;
    }

    /// <summary>The collective a train stage's gradients use: NCCL for a GPU backend, the TCP group for the CPU.</summary>
    public ICollective CollectiveFor(IBackend backend) => backend is CudaBackend cuda ? new NcclCollective(cuda, Control) : new Borrowed(Control);

    /// <summary>The TCP group lent to one training run (it outlives it: disposing the run's collective keeps it open).</summary>
    sealed class Borrowed(TcpCollective inner) : ICollective
    {
        public int Rank => inner.Rank;
        public int WorldSize => inner.WorldSize;
        public string Name => inner.Name;
        public void AllReduce(Tensor buffer, ReduceOp op, string activity) => inner.AllReduce(buffer, op, activity);
        public void ReduceScatter(Tensor input, Tensor output, ReduceOp op, string activity) => inner.ReduceScatter(input, output, op, activity);
        public void AllGather(Tensor input, Tensor output, string activity) => inner.AllGather(input, output, activity);
        public void Broadcast(Tensor buffer, int root, string activity) => inner.Broadcast(buffer, root, activity);
        public void Barrier(string activity) => inner.Barrier(activity);
        public void AllReduceHost(Span<double> values, string activity) => inner.AllReduceHost(values, activity);
        public void Dispose() { }
    }

    /// <summary>The test hook's step for this rank, when <see cref="FaultVariable"/> names it.</summary>
    public int? FaultStep()
    {
        if (Environment.GetEnvironmentVariable(FaultVariable) is not { } text || text.Split(':') is not [var r, var s]) return null;
        return int.TryParse(r, CultureInfo.InvariantCulture, out int rank) && rank == Rank && int.TryParse(s, CultureInfo.InvariantCulture, out int step) ? step : null;
    }

    public void Dispose() => Control.Dispose();
}

/// <summary>What rank 0 tells the other ranks to train: the stage by name and the context it runs in (as the runner built it).</summary>
public sealed record TrainJob(string Stage, IReadOnlyDictionary<StageKind, string> UpstreamOutputs,
    IReadOnlyDictionary<StageKind, string>? UpstreamHashes, string WorkDirectory);
