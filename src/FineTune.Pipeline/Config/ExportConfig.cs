using System.ComponentModel;
using System.ComponentModel.DataAnnotations;

namespace FineTune.Pipeline.Config;

public enum ExportFormat { Hf, Gguf }

/// <summary>GGUF file types, named as llama-quantize names them (lower case).</summary>
public enum GgufType
{
    F16,
    Bf16,
    [YamlName("q8_0")] Q8_0,
    [YamlName("q6_k")] Q6_K,
    [YamlName("q5_k_m")] Q5_K_M,
    [YamlName("q5_k_s")] Q5_K_S,
    [YamlName("q4_k_m")] Q4_K_M,
    [YamlName("q4_k_s")] Q4_K_S,
    [YamlName("q5_0")] Q5_0,
    [YamlName("q4_0")] Q4_0,
    [YamlName("q3_k_m")] Q3_K_M,
    [YamlName("q2_k")] Q2_K,
    F32,
}

/// <summary><c>stages.export</c>: deployable files.</summary>
public sealed record ExportConfig
{
    [Description("hf: safetensors model directory; gguf: GGUF v3 file plus an Ollama Modelfile.")]
    public IReadOnlyList<ExportFormat> Formats { get; init; } = [ExportFormat.Hf];

    [Range(1, 1024), Description("Maximum size of one safetensors shard in GB.")]
    public int ExportSize { get; init; } = 5;

    [YamlName("gguf_type"), ScalarOrList(FingerprintOneAsScalar = true),
     Description("GGUF file type, or a list of them (one .gguf and Modelfile each). k-quant mixes choose per-tensor types as llama-quantize does, without an importance matrix.")]
    public IReadOnlyList<GgufType> GgufTypes { get; init; } = [GgufType.F16];

    [Description("System prompt written into the Ollama Modelfile.")]
    public string? System { get; init; }
}
