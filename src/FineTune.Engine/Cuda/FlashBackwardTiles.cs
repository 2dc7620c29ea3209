namespace FineTune.Engine.Cuda;

/// <summary>
/// Tile shape of the flash-attention backward kernels (flash_attention.cu), 16 rows per warp in both:
/// dQ blocks of 16·<paramref name="DqWarps"/> query rows walk key tiles of <paramref name="DqKeys"/>;
/// dK/dV blocks of 16·<paramref name="DkvWarps"/> keys walk query tiles of <paramref name="DkvQueries"/>.
/// Only the shapes instantiated in the kernel file exist (its FLASH_DQ / FLASH_DKV lists).
/// </summary>
public sealed record FlashBackwardTiles(int DqWarps, int DqKeys, int DkvWarps, int DkvQueries)
{
    /// <summary>The measured best for head_dim 64 and 128 (docs/cuda.md): 64-row blocks, 64-wide streamed tiles.</summary>
    public static FlashBackwardTiles Default { get; } = new(4, 64, 4, 64);

    public string DqKernel(int headDim) => $"flash_backward_dq_d{headDim}_w{DqWarps}_n{DqKeys}";

    public string DkvKernel(int headDim) => $"flash_backward_dkv_d{headDim}_w{DkvWarps}_m{DkvQueries}";

    /// <summary>Two stages of K and V tiles [DqKeys][D+8] (bf16) and DqKeys segment ids.</summary>
    public int DqSharedBytes(int headDim) => 2 * (2 * DqKeys * (headDim + 8) * 2 + DqKeys * 4);

    /// <summary>K, V tiles [16·DkvWarps][D+8]; two stages of Q, dO tiles [DkvQueries][D+8] and lse, delta, segment ids.</summary>
    public int DkvSharedBytes(int headDim) =>
        2 * 16 * DkvWarps * (headDim + 8) * 2 + 2 * (2 * DkvQueries * (headDim + 8) * 2 + 3 * DkvQueries * 4);
}
