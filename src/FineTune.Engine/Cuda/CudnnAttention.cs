namespace FineTune.Engine.Cuda;

/// <summary>
/// Causal GQA attention through cuDNN's fused flash-attention engines (issue 13), on FineTune's bf16 layouts:
/// Q/O [B·S, Hq·D], K/V [B·S, Hkv·D], lse f32 [B, Hq, S]. Not part of the training path: only the device checks'
/// `cudnn` command calls it, to compare it with FineTune's flash kernels and time both. One plan per shape and
/// direction, built on first use; one workspace from the device's allocator, grown when a plan needs more.
/// </summary>
internal sealed class CudnnAttention : IDisposable
{
    readonly CudaDevice _dev;
    readonly Dictionary<(SdpaShape Shape, bool Backward, SdpaGraphOptions Options), CudnnPlan> _plans = [];
    ulong _workspace;
    long _workspaceBytes;

    public Cudnn Library { get; }

    /// <param name="libraryPath">A libcudnn file to load; null searches (<see cref="Cudnn.Load"/>).</param>
    public CudnnAttention(CudaDevice dev, string? libraryPath = null)
    {
        _dev = dev;
        dev.MakeCurrent();
        Library = Cudnn.Load(libraryPath);
        Library.SetStream(dev.Stream);
    }

    /// <summary>The shape's plan, built (and cached) on first use; throws <see cref="CudnnException"/> when cuDNN refuses.</summary>
    public CudnnPlan Plan(SdpaShape s, bool backward, SdpaGraphOptions? options = null)
    {
        options ??= SdpaGraphOptions.Default;
        if (_plans.TryGetValue((s, backward, options), out var plan)) return plan;
        var graph = backward ? CudnnSdpaGraphs.Backward(s, Library.Version, options) : CudnnSdpaGraphs.Forward(s, Library.Version, options);
        plan = new CudnnPlan(Library, graph, $"cuDNN SDPA {(backward ? "backward" : "forward")} {s} ({options})", options.Engine);
        _plans[(s, backward, options)] = plan;
        return plan;
    }

    /// <summary>O = softmax(causal(Q·Kᵀ·scale))·V and lse = the softmax's log-sum-exp per (batch, head, row).</summary>
    public void Forward(ulong o, ulong lse, ulong q, ulong k, ulong v, SdpaShape s, SdpaGraphOptions? options = null)
    {
        var plan = Plan(s, backward: false, options);
        plan.Execute(new Dictionary<string, ulong>
        {
            [CudnnSdpaGraphs.Q] = q, [CudnnSdpaGraphs.K] = k, [CudnnSdpaGraphs.V] = v,
            [CudnnSdpaGraphs.O] = o, [CudnnSdpaGraphs.Stats] = lse,
        }, Workspace(plan.WorkspaceBytes), $"cuDNN SDPA forward {s}");
        if (_dev.Profiling) _dev.Mark("cudnn_sdpa_forward");
    }

    /// <summary>
    /// dQ, dK, dV (overwritten) from dO, the forward's O and lse, and Q, K, V. The graph's two f32 intermediates
    /// (Δ = rowsum(dO∘O) and the dQ accumulator, which is zeroed first) sit after the plan's workspace.
    /// </summary>
    public void Backward(ulong dq, ulong dk, ulong dv, ulong dout, ulong o, ulong lse, ulong q, ulong k, ulong v, SdpaShape s,
        SdpaGraphOptions? options = null)
    {
        var plan = Plan(s, backward: true, options);
        long planBytes = Align(plan.WorkspaceBytes);
        long sumBytes = Align((long)s.Batch * s.QueryHeads * s.Seq * sizeof(float));
        long accBytes = (long)s.Batch * s.QueryHeads * s.Seq * s.HeadDim * sizeof(float);
        ulong ws = Workspace(planBytes + sumBytes + accBytes);
        ulong softmaxSum = ws + (ulong)planBytes, dqAccum = softmaxSum + (ulong)sumBytes;
        _dev.Zero(dqAccum, accBytes);
        plan.Execute(new Dictionary<string, ulong>
        {
            [CudnnSdpaGraphs.Q] = q, [CudnnSdpaGraphs.K] = k, [CudnnSdpaGraphs.V] = v, [CudnnSdpaGraphs.O] = o,
            [CudnnSdpaGraphs.dO] = dout, [CudnnSdpaGraphs.Stats] = lse,
            [CudnnSdpaGraphs.dQ] = dq, [CudnnSdpaGraphs.dK] = dk, [CudnnSdpaGraphs.dV] = dv,
            [CudnnSdpaGraphs.SoftmaxSum] = softmaxSum, [CudnnSdpaGraphs.DqAccum] = dqAccum,
        }, ws, $"cuDNN SDPA backward {s}");
        if (_dev.Profiling) _dev.Mark("cudnn_sdpa_backward");
    }

    static long Align(long bytes) => (bytes + 255) / 256 * 256;

    ulong Workspace(long bytes)
    {
        bytes = Math.Max(bytes, 256);
        if (bytes <= _workspaceBytes) return _workspace;
        if (_workspace != 0) _dev.Free(_workspace);
        _workspace = _dev.Allocate(bytes);
        _workspaceBytes = bytes;
        return _workspace;
    }

    public void Dispose()
    {
        foreach (var p in _plans.Values) p.Dispose();
        _plans.Clear();
        if (_workspace != 0) _dev.Free(_workspace);
        _workspace = 0;
        Library.Dispose();
    }
}
