namespace FineTune.Pipeline.Config;

/// <summary>LLaMA-Factory's quantization_type for 4-bit bitsandbytes bases.</summary>
public enum QuantizationType { Nf4, Fp4 }

/// <summary>LLaMA-Factory's quantization_method values; FineTune implements bnb (bitsandbytes) only.</summary>
public enum QuantizationMethod { Bnb, Gptq, Awq, Aqlm, Quanto, Eetq, Hqq }

/// <summary>
/// transformers' optim names FineTune implements: AdamW with f32 states, and bitsandbytes' AdamW8bit (8-bit block-wise
/// states); paged_adamw_8bit is the same update (paging to host memory under pressure is not implemented).
/// </summary>
public enum OptimizerName
{
    [YamlName("adamw_torch")] AdamwTorch,
    [YamlName("adamw_8bit")] Adamw8bit,
    [YamlName("paged_adamw_8bit")] PagedAdamw8bit,
}
