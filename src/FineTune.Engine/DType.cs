namespace FineTune.Engine;

/// <summary>Element types a backend buffer holds.</summary>
public enum DType
{
    F32,
    BF16,
    I32,
}

public static class DTypeExtensions
{
    public static int ByteSize(this DType dtype) => dtype switch
    {
        DType.F32 => 4,
        DType.BF16 => 2,
        DType.I32 => 4,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown dtype"),
    };
}
