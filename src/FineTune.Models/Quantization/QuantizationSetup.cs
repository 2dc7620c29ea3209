using System.Text.RegularExpressions;
using FineTune.Engine;

namespace FineTune.Models.Quantization;

/// <summary>
/// QLoRA's frozen base (LLaMA-Factory's quantization_bit / quantization_type / double_quantization with
/// quantization_method bnb): every decoder linear (q, k, v, o, gate, up, down; not the embedding or the LM head, which
/// transformers' BitsAndBytesConfig keeps in the compute dtype) is held as bitsandbytes 4-bit (blocks of 64) or LLM.int8.
/// </summary>
public sealed partial record QuantizationSetup(int Bits, QuantFormat FourBitType = QuantFormat.Nf4, bool DoubleQuantization = true)
{
    /// <summary>bitsandbytes' 4-bit block size (transformers' default for bnb_4bit).</summary>
    public const int BlockSize = 64;

    public QuantFormat Format => Bits == 8 ? QuantFormat.Int8 : FourBitType;

    /// <summary>Whether the weight of this HF name is one that is held quantized.</summary>
    public static bool IsQuantizedLinear(string name) => DecoderLinear().IsMatch(name);

    /// <summary>The weight the quantized model computes with: quantize, then dequantize (f32).</summary>
    public float[] RoundTrip(ReadOnlySpan<float> values, int rows, int cols) => Bits == 8
        ? Int8Rows.Quantize(values, rows, cols).Dequantize()
        : BnbFourBitTensor.Quantize(values, [rows, cols], FourBitType, DoubleQuantization, BlockSize).Dequantize();

    /// <summary>"nf4 (double quantization)", "fp4", "int8": how notes and progress lines name it.</summary>
    public string Describe() => Bits == 8 ? "int8 (LLM.int8 rows)"
        : $"{(FourBitType == QuantFormat.Nf4 ? "nf4" : "fp4")}{(DoubleQuantization ? " (double quantization)" : "")}";

    [GeneratedRegex(@"^model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$")]
    private static partial Regex DecoderLinear();
}
