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

    /// <summary>
    /// The head_dim 256 shape every target fits: streamed tiles of 32, so S and dP (16 × 32 per warp) fit beside the
    /// 128-float dQ accumulator, and beside the two 64-float halves of dK/dV (135 KB of shared memory: one block per
    /// multiprocessor). The default where <see cref="HeadDim256Wide"/> does not fit a block.
    /// </summary>
    public static FlashBackwardTiles HeadDim256 { get; } = new(4, 32, 4, 32);

    /// <summary>
    /// 8 warps with tiles of 32 at head_dim 256 (203 KB a block: twice the warps per multiprocessor at the same registers
    /// per thread), the same bits as <see cref="HeadDim256"/>; the default where a block may have that much shared memory
    /// (Hopper's 227 KB, not an A100's 163 KB): on the H200 its backward ran 9–14 % faster (flashbench, 2026-12-02).
    /// </summary>
    public static FlashBackwardTiles HeadDim256Wide { get; } = new(8, 32, 8, 32);

    /// <summary>Every shape instantiated for head_dim 256; `flashbench` times each, the checks run each.</summary>
    public static IReadOnlyList<FlashBackwardTiles> HeadDim256Shapes { get; } = [HeadDim256, HeadDim256Wide];

    /// <summary>
    /// The tiles used at <paramref name="headDim"/>: <paramref name="chosen"/> (or the default) up to 128; above, chosen
    /// when it is one of <see cref="HeadDim256Shapes"/>, else <see cref="HeadDim256Wide"/> when both its kernels fit
    /// <paramref name="sharedLimit"/> bytes of shared memory a block (the device's opt-in limit), else <see cref="HeadDim256"/>.
    /// </summary>
    public static FlashBackwardTiles For(int headDim, FlashBackwardTiles? chosen, int sharedLimit = int.MaxValue)
    {
        if (headDim <= 128) return chosen ?? Default;
        if (chosen is not null && HeadDim256Shapes.Contains(chosen)) return chosen;
        var wide = HeadDim256Wide;
        return wide.DqSharedBytes(headDim) <= sharedLimit && wide.DkvSharedBytes(headDim) <= sharedLimit ? wide : HeadDim256;
    }

    /// <summary>Kernel names; <paramref name="variant"/>: the instantiation that applies a sliding window and soft-cap.</summary>
    public string DqKernel(int headDim, bool variant = false) => $"flash_backward_dq_d{headDim}_w{DqWarps}_n{DqKeys}{(variant ? "_var" : "")}";

    public string DkvKernel(int headDim, bool variant = false) => $"flash_backward_dkv_d{headDim}_w{DkvWarps}_m{DkvQueries}{(variant ? "_var" : "")}";

    /// <summary>
    /// Blocks per key tile of the dK/dV kernel: at head_dim 256 each of two blocks accumulates 128 of the head dims
    /// (FLASH_DKV_DA in the kernel file: the two accumulators of all 256 would not fit in registers).
    /// </summary>
    public static int DkvColumnSplits(int headDim) => headDim > 128 ? 2 : 1;

    /// <summary>
    /// Two stages of K and V tiles [DqKeys][D+8] (bf16) and DqKeys segment ids; above head_dim 128 also the block's
    /// Q and dO tiles [16·DqWarps][D+8], read from shared memory rather than held in registers.
    /// </summary>
    public int DqSharedBytes(int headDim) =>
        2 * (2 * DqKeys * (headDim + 8) * 2 + DqKeys * 4) + (headDim > 128 ? 2 * 16 * DqWarps * (headDim + 8) * 2 : 0);

    /// <summary>K, V tiles [16·DkvWarps][D+8]; two stages of Q, dO tiles [DkvQueries][D+8] and lse, delta, segment ids.</summary>
    public int DkvSharedBytes(int headDim) =>
        2 * 16 * DkvWarps * (headDim + 8) * 2 + 2 * (2 * DkvQueries * (headDim + 8) * 2 + 3 * DkvQueries * 4);
}
