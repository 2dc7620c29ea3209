using FineTune.Engine;

namespace FineTune.Models;

public sealed partial class CausalLM
{
    /// <summary>The plan the activations were last carved for (what each layer keeps, the memory estimate).</summary>
    public CheckpointingPlan? CheckpointingPlan { get; private set; }

    /// <summary>Told the summary of each new gradient_checkpointing: auto plan ("checkpointing auto: keeping 20/28 layers, …").</summary>
    public Action<string>? CheckpointingNotice { get; set; }

    /// <summary>
    /// What each layer keeps for a batch of up to <paramref name="capacity"/> tokens. A forward without backward keeps
    /// nothing per layer (one shared set); training follows the setup's mode, auto choosing by the memory estimate.
    /// </summary>
    private CheckpointingPlan PlanActivations(int capacity, bool training)
    {
        int chunkRows = Math.Max(1, Setup.LogitsChunkRows);
        var bytes = ModelActivations.Bytes(Backend.ComputeDType, Spec, _layers, training, capacity, chunkRows, Fp8CodesInArena);
        var memory = Backend.Memory;
        long held = memory?.HeldBytes ?? WeightBytes + (_rope?.ByteLength ?? 0);
        long workspace = memory is null ? 0 : DeviceWorkspaceBytes(capacity);
        long? budget = Setup.MaxMemoryBytes;
        if (memory is { } m)
        {
            long device = m.HeldBytes + m.AvailableBytes - CheckpointingPlanner.Margin(m.TotalBytes);
            budget = budget is { } b ? Math.Min(b, device) : device;
        }
        var mode = Setup.Checkpointing;
        if (!training) return CheckpointingPlanner.Fixed(CheckpointingMode.On, _layers.Length, LowestBackwardLayer, capacity, bytes, held, workspace, null);
        if (mode != CheckpointingMode.Auto) return CheckpointingPlanner.Fixed(mode, _layers.Length, LowestBackwardLayer, capacity, bytes, held, workspace, null);
        var plan = CheckpointingPlanner.Choose(_layers.Length, LowestBackwardLayer, capacity, bytes, held, workspace, budget,
            allowSelective: SelectiveRecomputeApplies);
        CheckpointingNotice?.Invoke(plan.Summary);
        return plan;
    }

    /// <summary>
    /// Scratch a CUDA step allocates inside operations besides the arenas: cuBLASLt's workspace, the attention
    /// backward's row deltas and the larger of the flash backward's per-query-head F32 dK/dV partials (grouped-query
    /// attention) and cuDNN's backward workspace where cuDNN runs attention: its f32 dQ accumulator (cudnn-fast), or
    /// the deterministic backward's dP workspace, at most the workspace limit its slices keep to (an upper bound: the
    /// batch's sequence length is not known here, so the whole capacity is taken as one sequence). What fits the layer's
    /// spent MLP activations (<see cref="LayerActivations.SpentAfterMlpBackward"/>, where the backward puts it) costs nothing.
    /// </summary>
    private long DeviceWorkspaceBytes(int tokens)
    {
        long rows = (long)tokens * Spec.NumHeads;
        var backend = Backend is ProfilingBackend pb ? pb.Inner : Backend;
        var cuda = backend as Engine.Cuda.CudaBackend;
        long spent = cuda is { AttentionScratch: true } ? ModelActivations.SpentAfterMlpBackwardBytes(Backend.ComputeDType, Spec, tokens) : 0;
        long Unless(long bytes, long fitting) => fitting + 256 <= spent ? 0 : bytes;
        long partials = 2L * tokens * Spec.QDim * sizeof(float);
        long attention = Spec.NumHeads != Spec.NumKvHeads ? Unless(partials, partials) : 0;
        if (cuda is { AttentionKernels: var kernels } && kernels != Engine.Cuda.AttentionKernels.Flash && Spec.HeadDim is 64 or 128)
        {
            long dqAccumulator = (long)tokens * Spec.QDim * sizeof(float);
            // The deterministic backward's smallest slice of the same bits: one sequence and one key/value head's group.
            long oneGroup = 2L * (Spec.NumHeads / Spec.NumKvHeads) * tokens * tokens + rows * sizeof(float);
            long cudnn = kernels == Engine.Cuda.AttentionKernels.CudnnFast
                ? Unless(dqAccumulator + rows * sizeof(float), dqAccumulator + rows * sizeof(float))
                : Unless(Math.Min(cuda.CudnnDeterministicWorkspaceLimit, 2L * Spec.NumHeads * tokens * tokens + dqAccumulator), oneGroup);
            attention = Math.Max(attention, cudnn);
        }
        return Engine.Cuda.CudaDevice.CublasWorkspaceBytes + rows * sizeof(float) + attention;
    }

    /// <summary>
    /// Selective recompute rebuilds ln1, ln2 and act with the llama block's operations (pre-norm RMSNorm, the fused residual
    /// norm, SwiGLU); sandwich-norm (gemma) blocks, (1 + w) norms and GeGLU compute them otherwise, so their layers are kept
    /// whole or recomputed whole. So are a mixture-of-experts model's: a sparse layer's MLP rows live in the expert
    /// activations, not in the act this rebuilds.
    /// </summary>
    private bool SelectiveRecomputeApplies => !Spec.Sandwich && Spec.NormWeightOffset == 0 && Spec.Family.Block.Activation == MlpActivation.Silu
        && Spec.Moe is null;

    /// <summary>Whether layer <paramref name="l"/>'s forward runs again before its backward.</summary>
    private bool RecomputesLayer(int l) => CheckpointingPlanner.Recomputes(_acts!.Storage, l);

    /// <summary>
    /// A selective layer's backward reads ln1, ln2 and act, which its forward wrote into a scratch the layers above have
    /// since overwritten: ln1 = rmsnorm(x), ln2 = rmsnorm(resMid) and act = silu(gate)·up again. ln1 and act come from the
    /// forward's own operations; the forward's ln2 came from the fused residual norm, which normalises the resMid it
    /// stored with the same arithmetic in the same order as RmsNorm does (CPU: one row routine; CUDA: the same loop over
    /// the stored bf16 values), so the bits are the same.
    /// </summary>
    private void RecomputeSelective(DecoderLayer L, LayerActivations a, Tensor xFull, int n)
    {
        float eps = (float)Spec.RmsNormEps;
        Backend.RmsNorm(Rows(a.Ln1, n), Head1(a.Rstd1, n), Rows(xFull, n), L.InputNorm.Value, eps);
        Backend.RmsNorm(Rows(a.Ln2, n), Head1(a.Rstd2, n), Rows(a.ResMid, n), L.PostAttentionNorm.Value, eps);
        Backend.SwiGlu(Rows(a.Act, n), Rows(a.Gate, n), Rows(a.Up, n));
    }
}
