using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine;

namespace FineTune.Models.Quantization;

/// <summary>
/// <c>quantization_config.json</c> beside a QLoRA adapter: how its base was held while it trained (transformers'
/// BitsAndBytesConfig names), so a merge folds the adapter into that dequantized base. Absent for unquantized runs.
/// </summary>
public static class QuantizedBaseFile
{
    public const string FileName = "quantization_config.json";

    public static void Write(string directory, QuantizationSetup q)
    {
        var o = new JsonObject
        {
            ["quant_method"] = "bitsandbytes",
            ["load_in_4bit"] = q.Bits == 4,
            ["load_in_8bit"] = q.Bits == 8,
        };
        if (q.Bits == 4)
        {
            o["bnb_4bit_quant_type"] = q.FourBitType == QuantFormat.Fp4 ? "fp4" : "nf4";
            o["bnb_4bit_use_double_quant"] = q.DoubleQuantization;
        }
        File.WriteAllText(Path.Combine(directory, FileName), o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>The setup an adapter directory records, or null when it trained on an unquantized base.</summary>
    public static QuantizationSetup? Read(string directory)
    {
        string path = Path.Combine(directory, FileName);
        if (!File.Exists(path)) return null;
        try
        {
            var o = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            if (o["load_in_8bit"]?.GetValue<bool>() == true) return new QuantizationSetup(8);
            var type = o["bnb_4bit_quant_type"]?.GetValue<string>() switch
            {
                "nf4" => QuantFormat.Nf4,
                "fp4" => QuantFormat.Fp4,
                var other => throw new ModelFormatException(path, $"bnb_4bit_quant_type \"{other}\" is not nf4 or fp4."),
            };
            return new QuantizationSetup(4, type, o["bnb_4bit_use_double_quant"]?.GetValue<bool>() ?? true);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new ModelFormatException(path, $"not the quantization record FineTune writes ({e.Message}); re-run the train stage.");
        }
    }
}
