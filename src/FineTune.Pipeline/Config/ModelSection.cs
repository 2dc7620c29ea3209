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
public enum ScratchArchitecture { Llama, Qwen2, Qwen3, Mistral, Phi3, Gemma2, Gemma3Text, Qwen3Moe, Mixtral }

/// <summary>A tiny model generated in Hugging Face format (config.json, model.safetensors, tokenizer.json).</summary>
public sealed record ScratchConfig
{
    [Description("HF model_type written into config.json (llama, qwen2, qwen3, mistral, phi3, gemma2, gemma3_text, qwen3_moe, mixtral).")]
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

    // Mixture-of-experts keys, HF's names (qwen3_moe and mixtral only; unset: 8 experts, top 2, each of intermediate_size,
    // top-k weights renormalised). Omitted from the fingerprint when unset, so dense pipelines keep theirs.
    [Range(1, 4096), OmittedWhenUnset, Description("qwen3_moe: the number of experts per sparse layer (default 8).")]
    public int? NumExperts { get; init; }

    [Range(1, 4096), OmittedWhenUnset, Description("mixtral: the number of experts per layer (default 8).")]
    public int? NumLocalExperts { get; init; }

    [Range(1, 4096), OmittedWhenUnset, Description("qwen3_moe, mixtral: experts each token is routed to (default 2).")]
    public int? NumExpertsPerTok { get; init; }

    [Range(1, 262144), OmittedWhenUnset, Description("qwen3_moe: each expert's intermediate size (default intermediate_size; mixtral's experts are intermediate_size).")]
    public int? MoeIntermediateSize { get; init; }

    [OmittedWhenUnset, Description("qwen3_moe: renormalise the top-k router weights to sum 1 (default true, as the released Qwen3-MoE models; llama.cpp always does).")]
    public bool? NormTopkProb { get; init; }

    [Range(1, 1024), OmittedWhenUnset, Description("qwen3_moe: every n-th layer is sparse, the others dense MLPs of intermediate_size (default 1).")]
    public int? DecoderSparseStep { get; init; }

    [Range(0.0, 1e6), OmittedWhenUnset, Description("qwen3_moe, mixtral: config.json's router_aux_loss_coef (default 0.001).")]
    public double? RouterAuxLossCoef { get; init; }

    [OmittedWhenUnset, Description("qwen3_moe, mixtral: config.json's output_router_logits, which turns the load-balancing loss on in training (default false; moe_aux_loss_coef in the train stage turns it on too).")]
    public bool? OutputRouterLogits { get; init; }

    /// <summary>Whether any mixture-of-experts key is set.</summary>
    public bool HasExpertKeys => NumExperts is not null || NumLocalExperts is not null || NumExpertsPerTok is not null || MoeIntermediateSize is not null
        || NormTopkProb is not null || DecoderSparseStep is not null || RouterAuxLossCoef is not null || OutputRouterLogits is not null;

    /// <summary>The experts of a scratch model of a mixture-of-experts family (null for the dense ones).</summary>
    public FineTune.Models.MoeConfig? ExpertsFor(FineTune.Models.ModelArchitecture architecture) => architecture.Experts is not { } layout ? null : new()
    {
        NumExperts = NumExperts ?? NumLocalExperts ?? 8,
        NumExpertsPerTok = NumExpertsPerTok ?? 2,
        ExpertIntermediateSize = layout.ExpertIntermediateKey is null ? IntermediateSize : MoeIntermediateSize ?? IntermediateSize,
        NormTopKProb = layout.NormTopKFromConfig ? NormTopkProb ?? true : true,
        DecoderSparseStep = DecoderSparseStep ?? 1,
        RouterAuxLossCoef = RouterAuxLossCoef ?? layout.DefaultRouterAuxLossCoef,
        OutputRouterLogits = OutputRouterLogits ?? false,
    };

    [NotFingerprinted, Description("Path to a tokenizer.json (relative to the pipeline file); default: a byte-level BPE of the 256 byte tokens plus the chat special tokens. Its content, not its path, enters the fingerprint.")]
    public string? Tokenizer { get; init; }
}
