namespace FineTune.Engine.Cuda;

/// <summary>
/// Shape of the flash-attention forward kernel (flash_attention.cu, `flash_forward`): blocks of 16·<paramref name="Warps"/>
/// query rows walking key tiles of 64, with K and V copied through <paramref name="Stages"/> shared buffers
/// (1: copy, wait, multiply; 2: the next tile's copies in flight while this one is multiplied, separate waits for K and V).
/// Every shape gives the same bits (each row's arithmetic does not depend on the block it is in); which is fastest is
/// for `FineTune.DeviceChecks flashbench` to say. Only the shapes in <see cref="Instantiated"/> exist (the file's
/// FLASH_FORWARD list). `FINETUNE_FLASH_FORWARD=w4s1` (or another instantiated name) overrides the default.
/// </summary>
public sealed record FlashForwardTiles(int Warps, int Stages)
{
    const int KeyTile = 64; // FWD_BN

    /// <summary>The default for head_dim 64 and 128.</summary>
    public static FlashForwardTiles Default { get; } = new(4, 2);

    /// <summary>The default for head_dim 256 (the Q tile lives in shared memory beside K and V).</summary>
    public static FlashForwardTiles HeadDim256 { get; } = new(4, 1);

    static readonly FlashForwardTiles[] Up128 = [Default, new(4, 1), new(8, 2)], At256 = [HeadDim256, new(4, 2)];

    /// <summary>Every shape instantiated for a head size, its default first.</summary>
    public static IReadOnlyList<FlashForwardTiles> Instantiated(int headDim) => headDim > 128 ? At256 : Up128;

    /// <summary>Query rows per block.</summary>
    public int Rows => 16 * Warps;

    /// <summary>
    /// The shape used at <paramref name="headDim"/>: <paramref name="chosen"/> when it is instantiated there, else the
    /// head size's default.
    /// </summary>
    public static FlashForwardTiles For(int headDim, FlashForwardTiles? chosen) =>
        chosen is not null && Instantiated(headDim).Contains(chosen) ? chosen : Instantiated(headDim)[0];

    /// <summary>Parses `w4s2` (warps, stages); null for anything else.</summary>
    public static FlashForwardTiles? Parse(string? text)
    {
        if (text is null || text.Length < 4 || text[0] != 'w') return null;
        int s = text.IndexOf('s');
        return s > 1 && int.TryParse(text.AsSpan(1, s - 1), out int w) && int.TryParse(text.AsSpan(s + 1), out int st) && w > 0 && st > 0
            ? new FlashForwardTiles(w, st) : null;
    }

    public override string ToString() => $"w{Warps}s{Stages}";

    /// <summary>Kernel name; <paramref name="variant"/>: the instantiation that applies a sliding window and soft-cap.</summary>
    public string Kernel(int headDim, bool variant) => $"flash_forward_d{headDim}_w{Warps}_s{Stages}{(variant ? "_var" : "")}";

    /// <summary>Per stage K and V tiles [64][D+8] bf16 and 64 segment ids; above head_dim 128 also the block's Q tile [rows][D+8].</summary>
    public int SharedBytes(int headDim) =>
        Stages * (2 * KeyTile * (headDim + 8) * 2 + KeyTile * 4) + (headDim > 128 ? Rows * (headDim + 8) * 2 : 0);
}
