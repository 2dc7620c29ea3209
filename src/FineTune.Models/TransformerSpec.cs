namespace FineTune.Models;

/// <summary>rope_scaling of config.json: type default|linear|dynamic|yarn|llama3|longrope and its parameters.</summary>
public sealed record RopeScalingSpec(
    string Type,
    double Factor = 1.0,
    int? OriginalMaxPositionEmbeddings = null,
    double LowFreqFactor = 1.0,
    double HighFreqFactor = 4.0,
    double BetaFast = 32.0,
    double BetaSlow = 1.0,
    double? AttentionFactor = null)
{
    /// <summary>longrope: the per-frequency divisors of inv_freq (short up to original_max_position_embeddings, long beyond).</summary>
    public IReadOnlyList<double>? ShortFactor { get; init; }
    public IReadOnlyList<double>? LongFactor { get; init; }
    /// <summary>longrope: whether the factor was given; when not, it is max_position_embeddings / original_max_position_embeddings.</summary>
    public bool HasFactor { get; init; } = true;
}

/// <summary>
/// The dimensions and variants of a decoder-only transformer the engine runs. What differs between families is
/// in the architecture table (<see cref="ModelArchitecture"/>, <see cref="Family"/>): e.g. qwen2 has biases on
/// q/k/v; qwen3 normalises q and k per head (RMSNorm over head_dim) before RoPE; llama/qwen3 add biases on
/// q/k/v/o when attention_bias is set.
/// </summary>
public sealed record TransformerSpec
{
    public required string Architecture { get; init; }
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKvHeads { get; init; }
    public int? HeadDimOverride { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScalingSpec? RopeScaling { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public bool TieWordEmbeddings { get; init; }
    public bool QkvBias { get; init; }
    public bool OutputBias { get; init; }
    public bool QkNorm { get; init; }
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }
    /// <summary>The experts of a mixture-of-experts family (qwen3_moe, mixtral); null for dense models.</summary>
    public MoeConfig? Moe { get; init; }

    /// <summary>Whether layer <paramref name="layer"/>'s MLP is a mixture of experts.</summary>
    public bool IsSparseLayer(int layer) => Moe?.IsSparse(layer) ?? false;

    /// <summary>Whether some layer has a dense gated MLP of intermediate_size.</summary>
    public bool HasDenseLayers => Moe is null || Enumerable.Range(0, NumLayers).Any(l => !Moe.IsSparse(l));

    // Gemma 2/3 (the family's block options; defaults are the llama block's).
    /// <summary>Gemma: query_pre_attn_scalar; attention scores scale by its ^-½ instead of head_dim^-½.</summary>
    public double? QueryPreAttnScalar { get; init; }
    /// <summary>Gemma: the keys a local layer sees (0: none is local).</summary>
    public int SlidingWindow { get; init; }
    /// <summary>Gemma: per layer, whether it is a local (sliding-window) layer; null: none is.</summary>
    public IReadOnlyList<bool>? SlidingLayers { get; init; }
    /// <summary>Gemma: attn_logit_softcapping and final_logit_softcapping (0: none).</summary>
    public double AttnLogitSoftcap { get; init; }
    public double FinalLogitSoftcap { get; init; }
    /// <summary>Gemma 3: rope base of the local layers (rope_local_base_freq, no scaling); null: they share the global table.</summary>
    public double? LocalRopeTheta { get; init; }

    /// <summary>The family's (offset + w) RMSNorm: 1 for gemma, 0 otherwise.</summary>
    public float NormWeightOffset => Family.Block.NormWeightOffset;
    public bool Sandwich => Family.Block.NormPlacement == NormPlacement.Sandwich;
    public bool IsSlidingLayer(int layer) => SlidingLayers is { } s && SlidingWindow > 0 && s[layer];

    public int HeadDim => HeadDimOverride ?? HiddenSize / NumHeads;
    public int QDim => NumHeads * HeadDim;
    public int KvDim => NumKvHeads * HeadDim;

    /// <summary>The family's description in the architecture table.</summary>
    public ModelArchitecture Family => FamilyOf(Architecture);

    /// <summary>The family of a model_type, or NotSupportedException naming the families FineTune runs.</summary>
    public static ModelArchitecture FamilyOf(string architecture) => ModelArchitecture.Find(architecture)
        ?? throw new NotSupportedException($"architecture '{architecture}' is not supported; use one of {string.Join(", ", ModelArchitecture.All)}");

    /// <summary>Architecture flags from HF config.json fields: model_type and attention_bias, by the family's bias rules.</summary>
    public static (bool QkvBias, bool OutputBias, bool QkNorm) Variant(string architecture, bool attentionBias)
    {
        var family = FamilyOf(architecture);
        bool Bias(BiasRule rule) => rule switch { BiasRule.Always => true, BiasRule.Never => false, _ => attentionBias };
        return (Bias(family.QkvBias), Bias(family.OutputBias), family.Block.QkNorm);
    }

    /// <summary>The engine's view of a parsed HF config.json.</summary>
    public static TransformerSpec FromConfig(ModelConfig config)
    {
        if (config.MlpBias) throw new NotSupportedException("config.json sets mlp_bias: true; FineTune's engine supports MLPs without biases only");
        var family = FamilyOf(config.ModelType);
        if (family.Block.Activation == MlpActivation.GeluTanh)
        {
            if (config.HiddenAct is not ("gelu_pytorch_tanh" or "gelu_new" or "gelu_fast"))
                throw new NotSupportedException($"config.json sets hidden_activation '{config.HiddenAct}'; FineTune's engine runs {config.ModelType} with the tanh GELU (gelu_pytorch_tanh) only");
        }
        else if (config.HiddenAct is not ("silu" or "swish"))
            throw new NotSupportedException($"config.json sets hidden_act '{config.HiddenAct}'; FineTune's engine supports SwiGLU (silu) MLPs only");
        var (qkvBias, outputBias, qkNorm) = Variant(config.ModelType, config.AttentionBias);
        if (config.Moe is { RouterJitterNoise: > 0 } jittered)
            throw new NotSupportedException($"config.json sets router_jitter_noise {jittered.RouterJitterNoise}; FineTune's engine routes without jitter noise (set it to 0.0)");
        RopeScalingSpec? rope = config.RopeScaling is { } r && r.Type != "default"
            ? new RopeScalingSpec(r.Type, r.Factor, r.OriginalMaxPositionEmbeddings, r.LowFreqFactor ?? 1.0, r.HighFreqFactor ?? 4.0,
                r.BetaFast ?? 32.0, r.BetaSlow ?? 1.0, r.AttentionFactor)
            { ShortFactor = r.ShortFactor, LongFactor = r.LongFactor, HasFactor = r.HasFactor || r.Type != "longrope" }
            : null;
        return new TransformerSpec
        {
            Architecture = config.ModelType,
            VocabSize = config.VocabSize,
            HiddenSize = config.HiddenSize,
            IntermediateSize = config.IntermediateSize,
            NumLayers = config.NumHiddenLayers,
            NumHeads = config.NumAttentionHeads,
            NumKvHeads = config.NumKeyValueHeads,
            HeadDimOverride = config.HeadDim,
            RmsNormEps = config.RmsNormEps,
            RopeTheta = config.RopeTheta,
            RopeScaling = rope,
            MaxPositionEmbeddings = config.MaxPositionEmbeddings,
            TieWordEmbeddings = config.TieWordEmbeddings,
            QkvBias = qkvBias,
            OutputBias = outputBias,
            QkNorm = qkNorm,
            BosTokenId = config.BosTokenId,
            EosTokenId = config.EosTokenId,
            QueryPreAttnScalar = config.QueryPreAttnScalar,
            SlidingWindow = config.SlidingWindow ?? 0,
            SlidingLayers = config.LayerTypes?.Select(t => t == "sliding_attention").ToArray(),
            AttnLogitSoftcap = config.AttnLogitSoftcapping ?? 0,
            FinalLogitSoftcap = config.FinalLogitSoftcapping ?? 0,
            LocalRopeTheta = config.RopeLocalBaseFreq,
            Moe = config.Moe,
        };
    }

    /// <summary>
    /// The attention of layer <paramref name="layer"/>: its window (local layers), the logit soft-cap and the
    /// query_pre_attn_scalar scale; plain for the llama-style families.
    /// </summary>
    public Engine.AttentionVariant AttentionVariantOf(int layer) => new(
        IsSlidingLayer(layer) ? SlidingWindow : 0,
        (float)AttnLogitSoftcap,
        QueryPreAttnScalar is { } s ? (float)(1.0 / Math.Sqrt(s)) : null);

    /// <summary>Number of weights (tied embeddings counted once).</summary>
    public long ParameterCount
    {
        get
        {
            long c = HiddenSize, layer = c * QDim + 2 * c * KvDim + QDim * c + 2 * c;
            if (QkvBias) layer += QDim + 2 * KvDim;
            if (OutputBias) layer += c;
            if (QkNorm) layer += 2 * HeadDim;
            long mlps = 0;
            for (int l = 0; l < NumLayers; l++)
                mlps += IsSparseLayer(l) ? (long)Moe!.NumExperts * (c + 3 * c * Moe.ExpertIntermediateSize) : 3 * c * IntermediateSize;
            if (Sandwich) layer += 2 * c;
            return VocabSize * c * (TieWordEmbeddings ? 1 : 2) + NumLayers * layer + mlps + c;
        }
    }
}
