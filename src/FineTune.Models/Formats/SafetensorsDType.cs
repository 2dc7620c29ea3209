namespace FineTune.Models;

/// <summary>Element types of the safetensors format, spelled as in its header ("F32", "BF16", …).</summary>
public enum SafetensorsDType { Bool, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8E4M3, F8E5M2 }

public static class SafetensorsDTypes
{
    public static int ElementSize(this SafetensorsDType t) => t switch
    {
        SafetensorsDType.Bool or SafetensorsDType.U8 or SafetensorsDType.I8
            or SafetensorsDType.F8E4M3 or SafetensorsDType.F8E5M2 => 1,
        SafetensorsDType.I16 or SafetensorsDType.U16 or SafetensorsDType.F16 or SafetensorsDType.BF16 => 2,
        SafetensorsDType.I32 or SafetensorsDType.U32 or SafetensorsDType.F32 => 4,
        SafetensorsDType.F64 or SafetensorsDType.I64 or SafetensorsDType.U64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    /// <summary>The header spelling: BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2.</summary>
    public static string HeaderName(this SafetensorsDType t) => t switch
    {
        SafetensorsDType.Bool => "BOOL",
        SafetensorsDType.F8E4M3 => "F8_E4M3",
        SafetensorsDType.F8E5M2 => "F8_E5M2",
        _ => t.ToString(),
    };

    public static SafetensorsDType? Parse(string headerName) => headerName switch
    {
        "BOOL" => SafetensorsDType.Bool,
        "U8" => SafetensorsDType.U8,
        "I8" => SafetensorsDType.I8,
        "I16" => SafetensorsDType.I16,
        "U16" => SafetensorsDType.U16,
        "F16" => SafetensorsDType.F16,
        "BF16" => SafetensorsDType.BF16,
        "I32" => SafetensorsDType.I32,
        "U32" => SafetensorsDType.U32,
        "F32" => SafetensorsDType.F32,
        "F64" => SafetensorsDType.F64,
        "I64" => SafetensorsDType.I64,
        "U64" => SafetensorsDType.U64,
        "F8_E4M3" => SafetensorsDType.F8E4M3,
        "F8_E5M2" => SafetensorsDType.F8E5M2,
        _ => null,
    };

    /// <summary>torch_dtype names in config.json → the safetensors type; null for anything else.</summary>
    public static SafetensorsDType? FromTorchDtype(string torchDtype) => torchDtype switch
    {
        "float32" or "float" => SafetensorsDType.F32,
        "bfloat16" => SafetensorsDType.BF16,
        "float16" or "half" => SafetensorsDType.F16,
        _ => null,
    };

    public static string ToTorchDtype(this SafetensorsDType t) => t switch
    {
        SafetensorsDType.F32 => "float32",
        SafetensorsDType.BF16 => "bfloat16",
        SafetensorsDType.F16 => "float16",
        _ => throw new ArgumentOutOfRangeException(nameof(t), $"{t} is not a floating-point weight type"),
    };
}
