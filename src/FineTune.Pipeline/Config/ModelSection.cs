using System.ComponentModel;
using System.ComponentModel.DataAnnotations;

namespace FineTune.Pipeline.Config;

/// <summary>The <c>model</c> block: the base model's source.</summary>
public sealed record ModelSection
{
    /// <summary>Literal value of <see cref="Source"/> that makes FineTune generate the model (see <see cref="Scratch"/>).</summary>
    public const string ScratchSource = "scratch";

    [Required, Description("hf://org/name[@revision] (Hugging Face Hub), a local model directory (relative to the pipeline file), or 'scratch' (a small model FineTune generates).")]
    public string Source { get; init; } = "";

    [Description("Size and seed of the generated model when source is 'scratch'.")]
    public ScratchConfig? Scratch { get; init; }

    public bool IsScratch => Source == ScratchSource;

    public bool IsHub => Source.StartsWith("hf://", StringComparison.Ordinal);
}

/// <summary>The families a scratch model may have: HF's model_type values, each a file in FineTune.Models/Architectures.</summary>
public enum ScratchArchitecture { Llama, Qwen2, Qwen3, Mistral, Phi3, Gemma2, Gemma3Text }

/// <summary>A tiny model generated in Hugging Face format (config.json, model.safetensors, tokenizer.json).</summary>
public sealed record ScratchConfig
{
    [Description("HF model_type written into config.json (llama, qwen2, qwen3, mistral, phi3, gemma2, gemma3_text).")]
    public ScratchArchitecture Architecture { get; init; } = ScratchArchitecture.Qwen3;

    // The same bounds as ModelConfig's config.json check, so a scratch model that validates also loads.
    [Range(1, 65536)] public int HiddenSize { get; init; } = 64;
    [Range(1, 262144)] public int IntermediateSize { get; init; } = 128;
    [Range(1, 1024)] public int NumHiddenLayers { get; init; } = 2;
    [Range(1, 1024)] public int NumAttentionHeads { get; init; } = 4;
    [Range(1, 1024)] public int NumKeyValueHeads { get; init; } = 2;
    [Range(2, 1024)] public int HeadDim { get; init; } = 16;

    [Range(1, 1 << 22), Description("Vocabulary size; default: the tokenizer's size (max id + 1).")]
    public int? VocabSize { get; init; }

    [Range(1, 1 << 24)] public int MaxPositionEmbeddings { get; init; } = 2048;

    [Range(1.0, 1e9)] public double RopeTheta { get; init; } = 1_000_000;

    public bool TieWordEmbeddings { get; init; } = true;

    [Range(0, int.MaxValue), Description("Seed of the random weights.")]
    public int Seed { get; init; } = 0;

    // Gemma 2/3 only (HF's Gemma2Config / Gemma3TextConfig keys); unset: the config class's default. Omitted from the
    // fingerprint when unset, so the other families' pipelines keep their fingerprints.
    [Range(1, 1 << 24), OmittedWhenUnset, Description("gemma2/gemma3_text: keys a sliding-window layer sees (HF default 4096).")]
    public int? SlidingWindow { get; init; }

    [OmittedWhenUnset, Description("gemma2/gemma3_text: per layer sliding_attention or full_attention (default: gemma2 alternates from a sliding layer 0, gemma3_text makes every 6th layer full).")]
    public IReadOnlyList<string>? LayerTypes { get; init; }

    [Range(1e-6, 1e9), OmittedWhenUnset, Description("gemma2/gemma3_text: attention scores scale by query_pre_attn_scalar^-1/2 (HF default 256).")]
    public double? QueryPreAttnScalar { get; init; }

    [Range(1e-6, 1e9), OmittedWhenUnset, Description("gemma2/gemma3_text: attention scores become cap·tanh(s/cap) (gemma2 default 50; gemma3_text none).")]
    public double? AttnLogitSoftcapping { get; init; }

    [Range(1e-6, 1e9), OmittedWhenUnset, Description("gemma2/gemma3_text: final logits become cap·tanh(z/cap) (gemma2 default 30; gemma3_text none).")]
    public double? FinalLogitSoftcapping { get; init; }

    [Range(1.0, 1e12), OmittedWhenUnset, Description("gemma3_text: rope base of the sliding-window layers (HF default 10000).")]
    public double? RopeLocalBaseFreq { get; init; }

    [NotFingerprinted, Description("Path to a tokenizer.json (relative to the pipeline file); default: a byte-level BPE of the 256 byte tokens plus the chat special tokens. Its content, not its path, enters the fingerprint.")]
    public string? Tokenizer { get; init; }
}
