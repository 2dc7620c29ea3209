using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace FineTune.Models;

/// <summary>Conversions between float32 and the 16-bit weight formats.</summary>
public static class FloatConversions
{
    /// <summary>bfloat16 is the top 16 bits of a float32.</summary>
    public static float BFloat16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Round to nearest, ties to even (as torch does); NaN stays a quiet NaN.</summary>
    public static ushort SingleToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
            return (ushort)((bits >> 16) | 0x0040);
        uint roundingBias = 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)((bits + roundingBias) >> 16);
    }

    public static void BFloat16ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException("destination too short", nameof(destination));
        var dst = MemoryMarshal.Cast<float, uint>(destination);
        for (int i = 0; i < source.Length; i++)
            dst[i] = (uint)source[i] << 16;
    }

    public static void SingleToBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException("destination too short", nameof(destination));
        for (int i = 0; i < source.Length; i++)
            destination[i] = SingleToBFloat16(source[i]);
    }

    public static void HalfToSingle(ReadOnlySpan<Half> source, Span<float> destination) =>
        TensorPrimitives.ConvertToSingle(source, destination);

    public static void SingleToHalf(ReadOnlySpan<float> source, Span<Half> destination) =>
        TensorPrimitives.ConvertToHalf(source, destination);

    /// <summary>Encodes float32 values as <paramref name="dtype"/> bytes (F32, F16 or BF16), little-endian.</summary>
    public static void Encode(ReadOnlySpan<float> source, SafetensorsDType dtype, Span<byte> destination)
    {
        switch (dtype)
        {
            case SafetensorsDType.F32:
                MemoryMarshal.AsBytes(source).CopyTo(destination);
                break;
            case SafetensorsDType.F16:
                SingleToHalf(source, MemoryMarshal.Cast<byte, Half>(destination));
                break;
            case SafetensorsDType.BF16:
                SingleToBFloat16(source, MemoryMarshal.Cast<byte, ushort>(destination));
                break;
            default:
                throw new ArgumentException($"cannot encode floats as {dtype.HeaderName()}; use F32, F16 or BF16", nameof(dtype));
        }
    }

    /// <summary>Decodes <paramref name="source"/> bytes of <paramref name="dtype"/> into float32.</summary>
    public static void Decode(ReadOnlySpan<byte> source, SafetensorsDType dtype, Span<float> destination)
    {
        switch (dtype)
        {
            case SafetensorsDType.F32:
                MemoryMarshal.Cast<byte, float>(source).CopyTo(destination);
                break;
            case SafetensorsDType.F16:
                HalfToSingle(MemoryMarshal.Cast<byte, Half>(source), destination);
                break;
            case SafetensorsDType.BF16:
                BFloat16ToSingle(MemoryMarshal.Cast<byte, ushort>(source), destination);
                break;
            case SafetensorsDType.F64:
                Widen(MemoryMarshal.Cast<byte, double>(source), destination, static v => (float)v);
                break;
            case SafetensorsDType.I64:
                Widen(MemoryMarshal.Cast<byte, long>(source), destination, static v => v);
                break;
            case SafetensorsDType.U64:
                Widen(MemoryMarshal.Cast<byte, ulong>(source), destination, static v => v);
                break;
            case SafetensorsDType.I32:
                Widen(MemoryMarshal.Cast<byte, int>(source), destination, static v => v);
                break;
            case SafetensorsDType.U32:
                Widen(MemoryMarshal.Cast<byte, uint>(source), destination, static v => v);
                break;
            case SafetensorsDType.I16:
                Widen(MemoryMarshal.Cast<byte, short>(source), destination, static v => v);
                break;
            case SafetensorsDType.U16:
                Widen(MemoryMarshal.Cast<byte, ushort>(source), destination, static v => v);
                break;
            case SafetensorsDType.I8:
                Widen(MemoryMarshal.Cast<byte, sbyte>(source), destination, static v => v);
                break;
            case SafetensorsDType.U8:
            case SafetensorsDType.Bool:
                Widen(source, destination, static v => v);
                break;
            default:
                throw new ArgumentException($"cannot convert {dtype.HeaderName()} to float32", nameof(dtype));
        }
    }

    private static void Widen<T>(ReadOnlySpan<T> source, Span<float> destination, Func<T, float> convert)
    {
        for (int i = 0; i < source.Length; i++)
            destination[i] = convert(source[i]);
    }
}
