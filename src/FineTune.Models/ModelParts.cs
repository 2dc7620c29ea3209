using FineTune.Engine;

namespace FineTune.Models;

/// <summary>A weight of the model: its HF name, value in the compute dtype, and the trainable state when it trains.</summary>
internal sealed class Parameter(string name, int[] shape, ParameterRole role)
{
    public string Name { get; } = name;
    public int[] Shape { get; } = shape;
    public ParameterRole Role { get; } = role;
    public long Length { get; } = shape.Aggregate(1L, (a, b) => a * b);
    public Tensor Value { get; set; } = null!;
    public TrainableParameter? Trainable { get; set; }
    public Tensor? Grad => Trainable?.Grad;
    public bool IsTrainable => Trainable is not null;
}

/// <summary>PEFT LoRA on a linear layer: y += scale · B·A·dropout(x), A [r, in], B [out, r].</summary>
internal sealed class LoraAdapter(Parameter a, Parameter b, float scale, float dropout)
{
    public Parameter A { get; } = a;
    public Parameter B { get; } = b;
    public float Scale { get; } = scale;
    public float Dropout { get; } = dropout;
    public int Rank => A.Shape[0];
}

/// <summary>y = x·Wᵀ (+ b) (+ LoRA). W is [out, in] as HF stores it.</summary>
internal sealed class LoraLinear(string module, string shortName, Parameter weight, Parameter? bias)
{
    public string Module { get; } = module;
    public string ShortName { get; } = shortName;
    public Parameter Weight { get; } = weight;
    public Parameter? Bias { get; } = bias;
    public LoraAdapter? Lora { get; set; }
    public int Out => Weight.Shape[0];
    public int In => Weight.Shape[1];
    public bool HasTrainable => Weight.IsTrainable || (Bias?.IsTrainable ?? false) || Lora is not null;
}

internal sealed class DecoderLayer
{
    public required int Index { get; init; }
    public required Parameter InputNorm { get; init; }
    public required Parameter PostAttentionNorm { get; init; }
    public Parameter? QNorm { get; init; }
    public Parameter? KNorm { get; init; }
    public required LoraLinear Q { get; init; }
    public required LoraLinear K { get; init; }
    public required LoraLinear V { get; init; }
    public required LoraLinear O { get; init; }
    public required LoraLinear Gate { get; init; }
    public required LoraLinear Up { get; init; }
    public required LoraLinear Down { get; init; }

    public IEnumerable<LoraLinear> Linears => [Q, K, V, O, Gate, Up, Down];

    public IEnumerable<Parameter> Parameters
    {
        get
        {
            yield return InputNorm;
            foreach (var l in new[] { Q, K, V })
            {
                yield return l.Weight;
                if (l.Bias is not null) yield return l.Bias;
            }
            if (QNorm is not null) yield return QNorm;
            if (KNorm is not null) yield return KNorm;
            yield return O.Weight;
            if (O.Bias is not null) yield return O.Bias;
            yield return PostAttentionNorm;
            yield return Gate.Weight;
            yield return Up.Weight;
            yield return Down.Weight;
        }
    }

    public bool HasTrainable => Parameters.Any(p => p.IsTrainable) || Linears.Any(l => l.Lora is not null);
}
