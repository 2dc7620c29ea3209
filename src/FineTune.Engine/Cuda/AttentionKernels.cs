namespace FineTune.Engine.Cuda;

/// <summary>
/// The kernels of unpacked causal attention on CUDA (<see cref="CudaBackend.AttentionKernels"/>). Every choice gives
/// the same model to within bf16 rounding (the device checks compare each with the CPU backend); they differ in speed
/// and in whether a run repeats bit for bit.
/// </summary>
public enum AttentionKernels
{
    /// <summary>FineTune's own flash kernels (flash_attention.cu) for every layer: bit-reproducible.</summary>
    Flash,
    /// <summary>
    /// cuDNN's fused attention for the forward, and its backward in the form without atomic additions (dP in a workspace)
    /// while that fits <see cref="CudaBackend.CudnnDeterministicWorkspaceLimit"/>, else the flash backward:
    /// bit-reproducible. Falls back to the flash kernels where libcudnn 9 is missing or refuses a shape.
    /// </summary>
    Cudnn,
    /// <summary>cuDNN's forward and its fastest backward, whose dQ is summed with atomics: not bit-reproducible run to run.</summary>
    CudnnFast,
}

/// <summary>Reads <see cref="AttentionKernels"/> from `FINETUNE_ATTENTION` (flash, cudnn, cudnn-fast).</summary>
public static class AttentionKernelsSetting
{
    public const AttentionKernels Default = AttentionKernels.Cudnn;

    public static AttentionKernels Parse(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" => Default,
        "flash" => AttentionKernels.Flash,
        "cudnn" => AttentionKernels.Cudnn,
        "cudnn-fast" or "cudnn_fast" => AttentionKernels.CudnnFast,
        _ => throw new ArgumentException($"FINETUNE_ATTENTION={text} is not one of flash, cudnn, cudnn-fast"),
    };

    public static string Name(AttentionKernels k) => k switch
    {
        AttentionKernels.Flash => "flash",
        AttentionKernels.Cudnn => "cudnn",
        _ => "cudnn-fast",
    };
}
