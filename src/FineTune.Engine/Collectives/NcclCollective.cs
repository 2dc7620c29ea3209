using System.Diagnostics;
using System.Runtime.InteropServices;
using FineTune.Engine.Cuda;

namespace FineTune.Engine.Collectives;

/// <summary>
/// NCCL (libnccl.so.2) through function pointers, on the CUDA backend's own stream, so collectives queue behind the
/// backward like any kernel and no extra host synchronisation enters a step. The communicator's unique id goes from rank
/// 0 to the others over the TCP control group of the same rendezvous (torchrun's variables). NVLink multicast (NVLS) stays
/// off: NCCL_NVLS_ENABLE=0 is set for NCCL when the environment does not set it. <see cref="Wait"/> polls the stream and
/// ncclCommGetAsyncError under the time limit; an NCCL error or a timeout aborts the communicator (ncclCommAbort) and
/// throws, naming the rank and the activity, so a dead peer ends every rank instead of leaving them in a kernel for ever.
/// Host numbers, barriers and job messages go over the control group.
/// </summary>
public sealed unsafe class NcclCollective : ICollective
{
    public static readonly string[] LibraryNames = ["libnccl.so.2", "libnccl.so"];

    const int NcclSuccess = 0, NcclInProgress = 7;
    const int NcclFloat32 = 7, NcclBfloat16 = 9;
    // ncclRedOp_t in nccl.h: ncclSum 0, ncclProd 1, ncclMax 2, ncclMin 3, ncclAvg 4.
    const int NcclSum = 0, NcclMax = 2, NcclAvg = 4;

    [StructLayout(LayoutKind.Sequential, Size = 128)]
    struct UniqueId { public fixed byte Internal[128]; }

    readonly CudaBackend _backend;
    readonly TcpCollective _control;
    nint _comm;
    string? _broken;

    readonly delegate* unmanaged<UniqueId*, int> _getUniqueId;
    readonly delegate* unmanaged<nint*, int, UniqueId, int, int> _commInitRank;
    readonly delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int> _allReduce;
    readonly delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int> _reduceScatter;
    readonly delegate* unmanaged<nint, nint, nuint, int, nint, nint, int> _allGather;
    readonly delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int> _broadcast;
    readonly delegate* unmanaged<nint, int*, int> _commGetAsyncError;
    readonly delegate* unmanaged<nint, int> _commAbort;
    readonly delegate* unmanaged<nint, int> _commDestroy;
    readonly delegate* unmanaged<int, nint> _getErrorString;

    public int Rank => _control.Rank;
    public int WorldSize => _control.WorldSize;
    public string Name => "nccl";
    public bool Synchronous => false;
    public TcpCollective Control => _control;

    /// <param name="control">The TCP group of the same rendezvous: carries the unique id, host numbers and barriers.</param>
    public NcclCollective(CudaBackend backend, TcpCollective control)
    {
        _backend = backend;
        _control = control;
        var lib = NativeLibraryProbe.TryLoad(LibraryNames, out var tried)
            ?? throw new CollectiveException($"rank {control.Rank}: NCCL is not installed here (none of [{tried}] could be loaded); install NCCL 2 (libnccl.so.2 on the loader path) for several GPUs.");
        _getUniqueId = (delegate* unmanaged<UniqueId*, int>)lib.Export("ncclGetUniqueId");
        _commInitRank = (delegate* unmanaged<nint*, int, UniqueId, int, int>)lib.Export("ncclCommInitRank");
        _allReduce = (delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int>)lib.Export("ncclAllReduce");
        _reduceScatter = (delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int>)lib.Export("ncclReduceScatter");
        _allGather = (delegate* unmanaged<nint, nint, nuint, int, nint, nint, int>)lib.Export("ncclAllGather");
        _broadcast = (delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int>)lib.Export("ncclBroadcast");
        _commGetAsyncError = (delegate* unmanaged<nint, int*, int>)lib.Export("ncclCommGetAsyncError");
        _commAbort = (delegate* unmanaged<nint, int>)lib.Export("ncclCommAbort");
        _commDestroy = (delegate* unmanaged<nint, int>)lib.Export("ncclCommDestroy");
        _getErrorString = (delegate* unmanaged<int, nint>)lib.Export("ncclGetErrorString");
        NvlsOffUnlessSet();

        UniqueId id = default;
        if (Rank == 0) Check(_getUniqueId(&id), "ncclGetUniqueId", "creating the NCCL communicator");
        var bytes = new byte[128];
        if (Rank == 0) new ReadOnlySpan<byte>(id.Internal, 128).CopyTo(bytes);
        bytes = _control.BroadcastBytes(Rank == 0 ? bytes : null, "sharing the NCCL unique id");
        bytes.CopyTo(new Span<byte>(id.Internal, 128));
        _backend.BindToCurrentThread();
        nint comm;
        Check(_commInitRank(&comm, WorldSize, id, Rank), "ncclCommInitRank", "creating the NCCL communicator");
        _comm = comm;
        // Every rank has its communicator before the first collective (ncclCommInitRank itself also waits for all).
        _control.Barrier("creating the NCCL communicator");
    }

    /// <summary>NCCL reads its settings with getenv, which .NET's Environment.SetEnvironmentVariable does not reach on Unix.</summary>
    static void NvlsOffUnlessSet()
    {
        if (Environment.GetEnvironmentVariable("NCCL_NVLS_ENABLE") is not null || OperatingSystem.IsWindows()) return;
        Environment.SetEnvironmentVariable("NCCL_NVLS_ENABLE", "0");
        _ = setenv("NCCL_NVLS_ENABLE", "0", 0);
    }

    [DllImport("libc", CharSet = CharSet.Ansi)]
    static extern int setenv(string name, string value, int overwrite);

    static int DataType(Tensor t) => t.DType switch
    {
        DType.F32 => NcclFloat32,
        DType.BF16 => NcclBfloat16,
        _ => throw new ArgumentException($"NCCL collectives here take F32 or BF16 tensors, not {t.DType} ('{t.Name}')"),
    };

    nint Ptr(Tensor t) => (nint)_backend.DevicePointer(t);
    nint Stream => _backend.Device.Stream;
    /// <summary>
    /// NCCL's operation. Max is exact (no rounding) and takes F32 and BF16 alike; not yet run on several GPUs (no
    /// multi-GPU machine was at hand when it was added), while the TCP collective's Max is tested.
    /// </summary>
    static int Op(ReduceOp op) => op switch
    {
        ReduceOp.Sum => NcclSum,
        ReduceOp.Average => NcclAvg,
        ReduceOp.Max => NcclMax,
        _ => throw new ArgumentOutOfRangeException(nameof(op), op, "no NCCL operation for it"),
    };

    void Ready(string activity)
    {
        if (_broken is not null) throw new CollectiveException($"rank {Rank}: NCCL already failed ({_broken}); {activity} cannot run.");
    }

    public void AllReduce(Tensor buffer, ReduceOp op, string activity)
    {
        Ready(activity);
        Check(_allReduce(Ptr(buffer), Ptr(buffer), (nuint)buffer.Length, DataType(buffer), Op(op), _comm, Stream), "ncclAllReduce", activity);
    }

    public void ReduceScatter(Tensor input, Tensor output, ReduceOp op, string activity)
    {
        Ready(activity);
        if (input.Length != output.Length * WorldSize || input.DType != output.DType)
            throw new ArgumentException($"reduce-scatter: input {input} is not {WorldSize} segments of the output {output}");
        Check(_reduceScatter(Ptr(input), Ptr(output), (nuint)output.Length, DataType(input), Op(op), _comm, Stream), "ncclReduceScatter", activity);
    }

    public void AllGather(Tensor input, Tensor output, string activity)
    {
        Ready(activity);
        if (output.Length != input.Length * WorldSize || input.DType != output.DType)
            throw new ArgumentException($"all-gather: output {output} is not {WorldSize} × the input {input}");
        Check(_allGather(Ptr(input), Ptr(output), (nuint)input.Length, DataType(input), _comm, Stream), "ncclAllGather", activity);
    }

    public void Broadcast(Tensor buffer, int root, string activity)
    {
        Ready(activity);
        Check(_broadcast(Ptr(buffer), Ptr(buffer), (nuint)buffer.Length, DataType(buffer), root, _comm, Stream), "ncclBroadcast", activity);
    }

    public void Barrier(string activity)
    {
        Wait(activity);
        _control.Barrier(activity);
    }

    public void AllReduceHost(Span<double> values, string activity) => _control.AllReduceHost(values, activity);

    /// <summary>
    /// Polls until the stream is idle, checking NCCL's asynchronous error; past the time limit (or on an error) the
    /// communicator is aborted, which also frees the peers' kernels waiting on this rank.
    /// </summary>
    public void Wait(string activity)
    {
        Ready(activity);
        var clock = Stopwatch.StartNew();
        var device = _backend.Device;
        while (true)
        {
            int async;
            int rc = _commGetAsyncError(_comm, &async);
            if (rc != NcclSuccess) Abort($"ncclCommGetAsyncError failed ({Describe(rc)})", activity);
            if (async != NcclSuccess && async != NcclInProgress) Abort($"NCCL reported {Describe(async)}", activity);
            if (device.StreamDone()) return;
            if (clock.Elapsed > _control.Timeout)
                Abort($"the collectives did not finish within {_control.Timeout.TotalSeconds:0} s (a peer hangs, died or is far behind); raise FINETUNE_DDP_TIMEOUT (seconds) if a step legitimately takes longer", activity);
            Thread.Sleep(clock.ElapsedMilliseconds < 10 ? 0 : 1);
        }
    }

    void Abort(string why, string activity)
    {
        _broken = why;
        if (_comm != 0) { _commAbort(_comm); _comm = 0; }
        _control.Dispose();
        throw new CollectiveException($"rank {Rank}: {why} during {activity}; the NCCL communicator was aborted, stopping this rank.");
    }

    void Check(int rc, string call, string activity)
    {
        if (rc == NcclSuccess || rc == NcclInProgress) return;
        _broken = $"{call}: {Describe(rc)}";
        throw new CollectiveException($"rank {Rank}: {call} failed during {activity}: {Describe(rc)}.");
    }

    string Describe(int rc) => $"{Marshal.PtrToStringUTF8(_getErrorString(rc)) ?? "unknown error"} (ncclResult {rc})";

    public void Dispose()
    {
        if (_comm != 0)
        {
            if (_broken is null) { try { _backend.Device.Synchronize(); } catch (CudaException) { } _commDestroy(_comm); }
            else _commAbort(_comm);
            _comm = 0;
        }
        // The control group belongs to the caller (it outlives one training run); Abort closes it to end the peers.
    }
}
