using FineTune.Models.Quantization;

namespace FineTune.Models;

/// <summary>
/// Weights read from a model directory's safetensors (one file or shards with an index). Pre-quantized bitsandbytes
/// weights (4-bit or LLM.int8) read as their dequantized f32 values, and as themselves through <see cref="IQuantizedWeightSource"/>.
/// </summary>
public sealed class SafetensorsWeights(SafetensorsReader reader, string source) : IQuantizedWeightSource
{
    public bool Contains(string name) => reader.Contains(name);

    public void Read(string name, ReadOnlySpan<int> shape, Span<float> destination)
    {
        if (TryReadFourBit(name, shape) is { } fourBit) { fourBit.Dequantize().CopyTo(destination); return; }
        if (TryReadInt8(name, shape) is { } int8) { int8.Dequantize().CopyTo(destination); return; }
        var info = reader.Get(name);
        if (info.Shape.Count != shape.Length || !info.Shape.Select(x => (int)x).SequenceEqual(shape.ToArray()))
            throw new ModelFormatException(info.FilePath,
                $"tensor \"{name}\" has shape [{string.Join(", ", info.Shape)}] but {source}/config.json implies [{string.Join(", ", shape.ToArray())}]; the weights and the config disagree.");
        reader.ReadAsFloat32(name, destination);
    }

    public BnbFourBitTensor? TryReadFourBit(string name, ReadOnlySpan<int> shape) =>
        BnbCheckpoint.QuantStateName(reader, name) is null ? null : BnbCheckpoint.ReadFourBit(reader, name, shape);

    public Int8Rows? TryReadInt8(string name, ReadOnlySpan<int> shape) =>
        reader.Contains(name) && BnbCheckpoint.IsInt8(reader, name) ? BnbCheckpoint.ReadInt8(reader, name, shape) : null;
}
