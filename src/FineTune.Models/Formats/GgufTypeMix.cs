namespace FineTune.Models;

/// <summary>
/// llama.cpp's llama_ftype (the GGUF's general.file_type): the quantization a file is named for. The K-quant mixes
/// (_S, _M) and the plain types choose a type per tensor, as <c>llama-quantize</c> does (<see cref="GgufTypeMix"/>).
/// </summary>
public enum GgufFileType : uint
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 7, Q5_0 = 8, Q2_K = 10, Q3_K_M = 12,
    Q4_K_S = 14, Q4_K_M = 15, Q5_K_S = 16, Q5_K_M = 17, Q6_K = 18, BF16 = 32,
}

/// <summary>One tensor's type in a mix; <paramref name="FallbackFrom"/> is the type its rows could not hold.</summary>
public readonly record struct GgufTensorChoice(GgufTensorType Type, GgufTensorType? FallbackFrom = null);

/// <summary>
/// The per-tensor types of a file type, following llama.cpp's llama_tensor_get_type (src/llama-quant.cpp) for dense
/// llama/qwen2/qwen3 models without an importance matrix:
/// <list type="bullet">
/// <item>1-D tensors and norms stay F32; float file types (F32, F16, BF16) write every matrix in that type.</item>
/// <item>output.weight (and token_embd.weight when the embeddings are tied) → Q6_K, except in Q8_0 files, or Q8_0 when
/// its rows do not hold whole blocks of the file's type.</item>
/// <item>attn_v: Q2_K → Q4_K with grouped-query attention of 4+ heads per KV head, else Q3_K; Q3_K_M → Q5_K in the first
/// two layers, else Q4_K; Q4_K_M / Q5_K_M → Q6_K in the "more bits" layers; Q4_K_S → Q5_K in the first four layers;
/// a 70B model's Q3_K/Q4_K attn_v → Q5_K.</item>
/// <item>ffn_down: Q2_K → Q3_K; Q3_K_M → Q5_K in the first 1/16 of the layers, else Q4_K; Q4_K_M / Q5_K_M → Q6_K in the
/// "more bits" layers; Q4_K_S → Q5_K in the first 1/8.</item>
/// <item>attn_output: Q2_K → Q3_K; Q3_K_M → Q4_K.</item>
/// <item>"More bits" layers: the first and last eighth, and every third layer between (use_more_bits).</item>
/// <item>A row that is not a multiple of the chosen type's block falls back: Q2_K/Q3_K → Q4_0, Q4_K → Q5_0,
/// Q5_K → Q5_1, Q6_K → Q8_0; a row that is not a multiple of 32 either → F16.</item>
/// </list>
/// llama.cpp counts attn_v and ffn_down tensors in file order (by layer), so its counters are the layer index.
/// </summary>
public sealed class GgufTypeMix
{
    private readonly bool _is70B;
    private readonly int _layers, _gqa;
    private readonly bool _tied;

    /// <param name="architecture">llama.cpp's architecture name (llama, qwen2, qwen3).</param>
    public GgufTypeMix(GgufFileType fileType, string architecture, int layers, int heads, int kvHeads, bool tiedEmbeddings)
    {
        FileType = fileType;
        _layers = layers;
        _gqa = kvHeads > 0 ? heads / kvHeads : 0;
        _tied = tiedEmbeddings;
        // llama.cpp's model type LLM_TYPE_70B: llama with 80 layers and grouped-query attention, qwen2 with 80 layers.
        _is70B = layers == 80 && (architecture == "qwen2" || (architecture == "llama" && heads != kvHeads));
    }

    public GgufFileType FileType { get; }

    /// <summary>The type of the matrices the mix does not single out (llama_ftype_get_default_type).</summary>
    public static GgufTensorType DefaultType(GgufFileType fileType) => fileType switch
    {
        GgufFileType.F32 => GgufTensorType.F32,
        GgufFileType.F16 => GgufTensorType.F16,
        GgufFileType.BF16 => GgufTensorType.BF16,
        GgufFileType.Q4_0 => GgufTensorType.Q4_0,
        GgufFileType.Q5_0 => GgufTensorType.Q5_0,
        GgufFileType.Q8_0 => GgufTensorType.Q8_0,
        GgufFileType.Q2_K => GgufTensorType.Q2_K,
        GgufFileType.Q3_K_M => GgufTensorType.Q3_K,
        GgufFileType.Q4_K_S or GgufFileType.Q4_K_M => GgufTensorType.Q4_K,
        GgufFileType.Q5_K_S or GgufFileType.Q5_K_M => GgufTensorType.Q5_K,
        GgufFileType.Q6_K => GgufTensorType.Q6_K,
        _ => throw new ArgumentOutOfRangeException(nameof(fileType), fileType, null),
    };

    /// <summary>The type of tensor <paramref name="ggufName"/> of <paramref name="shape"/> (outermost first).</summary>
    public GgufTensorChoice TypeOf(string ggufName, IReadOnlyList<long> shape)
    {
        // The router (ffn_gate_inp) stays F32, as convert_hf_to_gguf writes it and llama-quantize leaves it.
        if (shape.Count < 2 || !ggufName.EndsWith("weight", StringComparison.Ordinal) || ggufName.Contains("_norm.weight", StringComparison.Ordinal)
            || ggufName.Contains("ffn_gate_inp.weight", StringComparison.Ordinal))
            return new(GgufTensorType.F32);
        var type = DefaultType(FileType);
        if (!GgmlQuants.IsQuantized(type))
            return new(type);
        type = MixType(type, ggufName, shape[^1]);
        return Fallback(type, shape[^1]);
    }

    /// <summary>use_more_bits: the first and last eighth of the layers and every third one between.</summary>
    public static bool UseMoreBits(int layer, int layers) =>
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;

    private GgufTensorType MixType(GgufTensorType type, string name, long rowLength)
    {
        var ft = FileType;
        if (name == "output.weight" || (_tied && name == "token_embd.weight"))
        {
            if (rowLength % GgmlQuants.BlockSize(type) != 0) return GgufTensorType.Q8_0;
            return type != GgufTensorType.Q8_0 ? GgufTensorType.Q6_K : type;
        }
        if (name == "token_embd.weight")
            return type;
        int layer = LayerOf(name);
        if (name.Contains("attn_v.weight", StringComparison.Ordinal))
        {
            if (ft == GgufFileType.Q2_K) type = _gqa >= 4 ? GgufTensorType.Q4_K : GgufTensorType.Q3_K;
            else if (ft == GgufFileType.Q3_K_M) type = layer < 2 ? GgufTensorType.Q5_K : GgufTensorType.Q4_K;
            else if ((ft is GgufFileType.Q4_K_M or GgufFileType.Q5_K_M) && UseMoreBits(layer, _layers)) type = GgufTensorType.Q6_K;
            else if (ft == GgufFileType.Q4_K_S && layer < 4) type = GgufTensorType.Q5_K;
            if (_is70B && (type is GgufTensorType.Q3_K or GgufTensorType.Q4_K)) type = GgufTensorType.Q5_K;
            return type;
        }
        if (name.Contains("ffn_down", StringComparison.Ordinal))
        {
            if (ft == GgufFileType.Q2_K) return GgufTensorType.Q3_K;
            if (ft == GgufFileType.Q3_K_M) return layer < _layers / 16 ? GgufTensorType.Q5_K : GgufTensorType.Q4_K;
            if (ft == GgufFileType.Q4_K_M) return UseMoreBits(layer, _layers) ? GgufTensorType.Q6_K : type;
            if (ft == GgufFileType.Q5_K_M && UseMoreBits(layer, _layers)) return GgufTensorType.Q6_K;
            if (ft == GgufFileType.Q4_K_S && layer < _layers / 8) return GgufTensorType.Q5_K;
            return type;
        }
        if (name.Contains("attn_output.weight", StringComparison.Ordinal))
        {
            if (ft == GgufFileType.Q2_K) return GgufTensorType.Q3_K;
            if (ft == GgufFileType.Q3_K_M) return GgufTensorType.Q4_K;
        }
        return type;
    }

    /// <summary>tensor_type_fallback: a type whose blocks do not divide the row gives way to a 32-value type, or F16.</summary>
    private static GgufTensorChoice Fallback(GgufTensorType type, long rowLength)
    {
        if (rowLength % GgmlQuants.BlockSize(type) == 0)
            return new(type);
        var fallback = type switch
        {
            GgufTensorType.Q2_K or GgufTensorType.Q3_K => GgufTensorType.Q4_0,
            GgufTensorType.Q4_K => GgufTensorType.Q5_0,
            GgufTensorType.Q5_K => GgufTensorType.Q5_1,
            GgufTensorType.Q6_K => GgufTensorType.Q8_0,
            _ => type,
        };
        if (rowLength % GgmlQuants.BlockSize(fallback) != 0)
            fallback = GgufTensorType.F16;
        return new(fallback, type);
    }

    private static int LayerOf(string name)
    {
        const string prefix = "blk.";
        if (!name.StartsWith(prefix, StringComparison.Ordinal))
            return -1;
        int dot = name.IndexOf('.', prefix.Length);
        return dot > 0 && int.TryParse(name.AsSpan(prefix.Length, dot - prefix.Length), out int layer) ? layer : -1;
    }
}
