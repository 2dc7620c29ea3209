using System.ComponentModel;
using System.ComponentModel.DataAnnotations;

namespace FineTune.Pipeline.Config;

public enum ExportFormat { Hf, Gguf }

public enum GgufType
{
    F16,
    Bf16,
    [YamlName("q8_0")] Q8_0,
}

/// <summary><c>stages.export</c>: deployable files.</summary>
public sealed record ExportConfig
{
    [Description("hf: safetensors model directory; gguf: GGUF v3 file plus an Ollama Modelfile.")]
    public IReadOnlyList<ExportFormat> Formats { get; init; } = [ExportFormat.Hf];

    [Range(1, 1024), Description("Maximum size of one safetensors shard in GB.")]
    public int ExportSize { get; init; } = 5;

    public GgufType GgufType { get; init; } = GgufType.F16;

    [Description("System prompt written into the Ollama Modelfile.")]
    public string? System { get; init; }
}
