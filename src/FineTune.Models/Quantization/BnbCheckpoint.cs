using System.Text;
using System.Text.Json;
using FineTune.Engine;

namespace FineTune.Models.Quantization;

/// <summary>
/// Pre-quantized bitsandbytes tensors in a safetensors checkpoint (a model saved by transformers with
/// BitsAndBytesConfig, e.g. the Hub's "*-bnb-4bit" repositories). A 4-bit linear "X.weight" is stored as
/// X.weight (U8 [(n+1)/2, 1], packed codes), X.weight.absmax (F32 [blocks], or U8 when double-quantized),
/// X.weight.quant_map (F32 [16]), X.weight.nested_absmax (F32), X.weight.nested_quant_map (F32 [256]) and
/// X.weight.quant_state.bitsandbytes__nf4 (or __fp4): U8 bytes of a JSON object with quant_type, blocksize, dtype,
/// shape and, when nested, nested_blocksize, nested_dtype, nested_offset (bnb's QuantState.as_dict(packed=True)).
/// An 8-bit linear is X.weight (I8 [out, in]) beside X.SCB (F32 [out]).
/// </summary>
public static class BnbCheckpoint
{
    /// <summary>The packed quant-state key of a 4-bit weight, or null when <paramref name="weightName"/> is not 4-bit.</summary>
    public static string? QuantStateName(SafetensorsReader reader, string weightName)
    {
        foreach (var type in new[] { "nf4", "fp4" })
        {
            string key = $"{weightName}.quant_state.bitsandbytes__{type}";
            if (reader.Contains(key)) return key;
        }
        return null;
    }

    /// <summary>Whether the checkpoint holds <paramref name="weightName"/> as LLM.int8 (an I8 weight with its SCB).</summary>
    public static bool IsInt8(SafetensorsReader reader, string weightName) =>
        weightName.EndsWith(".weight", StringComparison.Ordinal) && reader.Contains(weightName[..^".weight".Length] + ".SCB")
        && reader.Get(weightName).DType == SafetensorsDType.I8;

    /// <summary>Reads a pre-quantized 4-bit weight; the shape it states must be <paramref name="expectedShape"/>.</summary>
    public static BnbFourBitTensor ReadFourBit(SafetensorsReader reader, string weightName, ReadOnlySpan<int> expectedShape)
    {
        string stateKey = QuantStateName(reader, weightName)
            ?? throw new ModelFormatException(reader.Get(weightName).FilePath, $"tensor \"{weightName}\" has no quant_state.bitsandbytes__nf4/fp4 entry; it is not a bitsandbytes 4-bit weight.");
        string file = reader.Get(stateKey).FilePath;
        JsonElement state;
        try { state = JsonDocument.Parse(Encoding.UTF8.GetString(reader.GetBytes(stateKey))).RootElement; }
        catch (JsonException e)
        {
            throw new ModelFormatException(file, $"tensor \"{stateKey}\" is not the UTF-8 JSON bitsandbytes packs its quant state into ({e.Message}); the checkpoint is damaged.");
        }
        string quantType = Str(state, "quant_type", file, stateKey);
        var format = quantType switch
        {
            "nf4" => QuantFormat.Nf4,
            "fp4" => QuantFormat.Fp4,
            _ => throw new ModelFormatException(file, $"tensor \"{stateKey}\": quant_type \"{quantType}\" is not nf4 or fp4."),
        };
        int blockSize = Int(state, "blocksize", file, stateKey);
        if (blockSize <= 0 || blockSize % 2 != 0)
            throw new ModelFormatException(file, $"tensor \"{stateKey}\": blocksize {blockSize} is not a positive even number.");
        var shape = state.TryGetProperty("shape", out var s) && s.ValueKind == JsonValueKind.Array
            ? s.EnumerateArray().Select(e => e.GetInt32()).ToArray()
            : throw new ModelFormatException(file, $"tensor \"{stateKey}\" has no \"shape\" array.");
        if (!shape.AsSpan().SequenceEqual(expectedShape))
            throw new ModelFormatException(file,
                $"tensor \"{weightName}\" is quantized with shape [{string.Join(", ", shape)}] but config.json implies [{string.Join(", ", expectedShape.ToArray())}]; the weights and the config disagree.");
        long n = shape.Aggregate(1L, (a, b) => a * b);
        long blocks = (n + blockSize - 1) / blockSize;
        var codes = Bytes(reader, weightName, SafetensorsDType.U8, (n + 1) / 2);
        var map = Floats(reader, weightName + ".quant_map", 16);
        var book = QuantCodebooks.For(format);
        for (int i = 0; i < 16; i++)
            if (BitConverter.SingleToInt32Bits(map[i]) != BitConverter.SingleToInt32Bits(book[i]) && map[i] != book[i])
                throw new ModelFormatException(reader.Get(weightName + ".quant_map").FilePath,
                    $"tensor \"{weightName}.quant_map\"[{i}] is {map[i]:R}, not bitsandbytes' {quantType} code {book[i]:R}; FineTune dequantizes with the published {quantType} code book only.");
        string absmaxName = weightName + ".absmax";
        if (!reader.Contains(weightName + ".nested_absmax"))
            return new BnbFourBitTensor(format, shape, codes, Floats(reader, absmaxName, blocks), null, blockSize);
        int nestedBlock = Int(state, "nested_blocksize", file, stateKey);
        float offset = state.TryGetProperty("nested_offset", out var o) && o.ValueKind == JsonValueKind.Number
            ? (float)o.GetDouble()
            : throw new ModelFormatException(file, $"tensor \"{stateKey}\" has nested_absmax but no numeric \"nested_offset\".");
        var nested = new NestedStatistics(Bytes(reader, absmaxName, SafetensorsDType.U8, blocks),
            Floats(reader, weightName + ".nested_absmax", (blocks + nestedBlock - 1) / nestedBlock),
            Floats(reader, weightName + ".nested_quant_map", 256), offset, nestedBlock);
        return new BnbFourBitTensor(format, shape, codes, null, nested, blockSize);
    }

    /// <summary>Reads an LLM.int8 weight (CB) and its SCB.</summary>
    public static Int8Rows ReadInt8(SafetensorsReader reader, string weightName, ReadOnlySpan<int> expectedShape)
    {
        var info = reader.Get(weightName);
        if (expectedShape.Length != 2 || info.Shape.Count != 2 || info.Shape[0] != expectedShape[0] || info.Shape[1] != expectedShape[1])
            throw new ModelFormatException(info.FilePath,
                $"tensor \"{weightName}\" has shape [{string.Join(", ", info.Shape)}] but config.json implies [{string.Join(", ", expectedShape.ToArray())}]; the weights and the config disagree.");
        var cb = Bytes(reader, weightName, SafetensorsDType.I8, info.ElementCount);
        var scb = Floats(reader, weightName[..^".weight".Length] + ".SCB", expectedShape[0]);
        return new Int8Rows(expectedShape[0], expectedShape[1], (sbyte[])(Array)cb, scb);
    }

    private static byte[] Bytes(SafetensorsReader reader, string name, SafetensorsDType dtype, long count)
    {
        var info = reader.Get(name);
        if (info.DType != dtype || info.ElementCount != count)
            throw new ModelFormatException(info.FilePath,
                $"tensor \"{name}\" is {info.DType.HeaderName()} with {info.ElementCount} elements; a bitsandbytes weight of this shape has {dtype.HeaderName()} with {count}.");
        return reader.GetBytes(name).ToArray();
    }

    private static float[] Floats(SafetensorsReader reader, string name, long count)
    {
        var info = reader.Get(name);
        if (info.ElementCount != count)
            throw new ModelFormatException(info.FilePath, $"tensor \"{name}\" has {info.ElementCount} elements, expected {count} for this weight's blocks.");
        return reader.ReadAsFloat32(name);
    }

    private static string Str(JsonElement o, string key, string file, string tensor) =>
        o.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()!
        : throw new ModelFormatException(file, $"tensor \"{tensor}\" has no string \"{key}\".");

    private static int Int(JsonElement o, string key, string file, string tensor) =>
        o.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i
        : throw new ModelFormatException(file, $"tensor \"{tensor}\" has no integer \"{key}\".");
}

/// <summary>A weight source that can hand over pre-quantized bitsandbytes weights as they are stored.</summary>
public interface IQuantizedWeightSource : IWeightSource
{
    /// <summary>The 4-bit weight when the checkpoint holds <paramref name="name"/> pre-quantized, else null.</summary>
    BnbFourBitTensor? TryReadFourBit(string name, ReadOnlySpan<int> shape);

    /// <summary>The LLM.int8 weight when the checkpoint holds <paramref name="name"/> as int8 with an SCB, else null.</summary>
    Int8Rows? TryReadInt8(string name, ReadOnlySpan<int> shape);
}
