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
    /// <summary>The base value of a LoRA additional_target (modules_to_save) parameter, for the adapter-disabled forward.</summary>
    public Tensor? Original { get; set; }
    public Tensor? Grad => GradView ?? Trainable?.Grad;
    public bool IsTrainable => Trainable is not null || (ViewOf?.Source.IsTrainable ?? false);

    /// <summary>
    /// A view of rows [Row, Row + Shape[0]) of another parameter (q of a fused qkv_proj, B_q of its LoRA): it has no
    /// storage, name or optimizer state of its own; its value and gradient are row views of the source's.
    /// </summary>
    public (Parameter Source, int Row)? ViewOf { get; init; }
    /// <summary>The gradient of a view: rows of the source's gradient.</summary>
    public Tensor? GradView { get; set; }

    /// <summary>Points a view's value and gradient at its rows of the source (after the source has both).</summary>
    public void ResolveView()
    {
        var (source, row) = ViewOf!.Value;
        long offset = (long)row * Shape[1];
        Value = source.Value.View(offset, Shape, Name);
        GradView = source.Grad?.View(offset, Shape, Name + ".grad");
    }
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

/// <summary>
/// y = x·Wᵀ (+ b) (+ LoRA). W is [out, in] as HF stores it. In a fused module (phi3's qkv_proj, gate_up_proj) each
/// part is a linear whose weight is a row view of the fused weight, <see cref="Module"/> and <see cref="ShortName"/>
/// name the fused module (what PEFT targets) and <see cref="FusedRow"/> is the part's first row in it.
/// </summary>
internal sealed class LoraLinear(string module, string shortName, Parameter weight, Parameter? bias)
{
    public int? FusedRow { get; init; }
    public string Module { get; } = module;
    public string ShortName { get; } = shortName;
    public Parameter Weight { get; } = weight;
    public Parameter? Bias { get; } = bias;
    public LoraAdapter? Lora { get; set; }
    public int Out => Weight.Shape[0];
    public int In => Weight.Shape[1];
    public bool HasTrainable => Weight.IsTrainable || (Bias?.IsTrainable ?? false) || Lora is not null;
}

/// <summary>
/// The LoRA adapters of linears that read the same input (q,k,v read ln1; gate,up read ln2; o and down alone).
/// Their A matrices are stacked row-wise in one tensor [Σ r, in] and each adapter's A value and gradient are views of
/// its own r rows (ranks may differ per module, as PEFT's rank_pattern allows), so the forward computes xaᵀ = A·xᵀ for
/// the whole group in one product (one pass over x) and the backward accumulates dA and dx for the group in one product each.
/// </summary>
internal sealed class LoraGroup
{
    private readonly int[] _rowOffsets;

    public LoraGroup(LoraLinear[] linears)
    {
        Linears = linears;
        _rowOffsets = new int[linears.Length];
        for (int j = 0; j < linears.Length; j++)
        {
            // The parts of a fused module share one A (PEFT's one lora_A per fused module): the same rows.
            int shared = Array.FindIndex(linears, 0, j, l => ReferenceEquals(l.Lora!.A, linears[j].Lora!.A));
            if (shared >= 0)
            {
                _rowOffsets[j] = _rowOffsets[shared];
                continue;
            }
            _rowOffsets[j] = Rows;
            Rows += linears[j].Lora!.Rank;
        }
    }

    /// <summary>Whether linear <paramref name="index"/> reads the A rows of an earlier linear of the group (a fused module's part).</summary>
    public bool SharesRows(int index) => Array.FindIndex(Linears, 0, index, l => ReferenceEquals(l.Lora!.A, Linears[index].Lora!.A)) >= 0;

    /// <summary>The adapted linears of the group, in layer order; linear j owns rows [RowOffset(j), RowOffset(j) + r_j).</summary>
    public LoraLinear[] Linears { get; }
    public int Rows { get; }
    public int In => Linears[0].In;
    /// <summary>Stacked A values [Σ r, in] in the compute dtype.</summary>
    public Tensor A { get; set; } = null!;
    /// <summary>Stacked A gradients [Σ r, in], F32 (null when A does not train).</summary>
    public Tensor? AGrad { get; set; }
    public int IndexOf(LoraLinear linear) => Array.IndexOf(Linears, linear);
    /// <summary>First row of linear <paramref name="index"/>'s adapter in the stacked A.</summary>
    public int RowOffset(int index) => _rowOffsets[index];
}

internal sealed class DecoderLayer
{
    /// <summary>Index in <see cref="Linears"/> of each input set's first linear (see <see cref="InputSets"/>).</summary>
    public static readonly int[] FirstLinearOfSet = [0, 3, 4, 6];
    public const int InputSetCount = 4;
    private LoraLinear[][]? _inputSets;

    public required int Index { get; init; }
    public required Parameter InputNorm { get; init; }
    public required Parameter PostAttentionNorm { get; init; }
    /// <summary>Sandwich blocks (gemma): the norms before and after the MLP.</summary>
    public Parameter? PreFeedforwardNorm { get; init; }
    public Parameter? PostFeedforwardNorm { get; init; }
    public Parameter? QNorm { get; init; }
    public Parameter? KNorm { get; init; }
    public required LoraLinear Q { get; init; }
    public required LoraLinear K { get; init; }
    public required LoraLinear V { get; init; }
    public required LoraLinear O { get; init; }
    /// <summary>The dense MLP's linears (null in a mixture-of-experts layer, whose MLP is <see cref="Experts"/>).</summary>
    public LoraLinear? Gate { get; init; }
    public LoraLinear? Up { get; init; }
    public LoraLinear? Down { get; init; }
    /// <summary>The layer's mixture of experts (qwen3_moe's sparse layers, every mixtral layer); null for a dense MLP.</summary>
    public ExpertBlock? Experts { get; init; }

    public IEnumerable<LoraLinear> Linears => Experts is null ? [Q, K, V, O, Gate!, Up!, Down!] : [Q, K, V, O];

    /// <summary>
    /// Linears that read the same input: [q, k, v] (ln1), [o] (attention), [gate, up] (ln2), [down] (SwiGLU); the MLP's
    /// sets are empty in a mixture-of-experts layer.
    /// </summary>
    public LoraLinear[][] InputSets => _inputSets ??= Experts is null ? [[Q, K, V], [O], [Gate!, Up!], [Down!]] : [[Q, K, V], [O], [], []];

    /// <summary>Per input set, the group of its LoRA adapters (null where none of its linears is targeted).</summary>
    public LoraGroup?[] LoraGroups { get; } = new LoraGroup?[InputSetCount];

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
            if (PreFeedforwardNorm is not null) yield return PreFeedforwardNorm;
            if (PostFeedforwardNorm is not null) yield return PostFeedforwardNorm;
            if (Experts is not null)
            {
                foreach (var p in Experts.Parameters) yield return p;
                yield break;
            }
            yield return Gate!.Weight;
            yield return Up!.Weight;
            yield return Down!.Weight;
        }
    }

    public bool HasTrainable => Parameters.Any(p => p.IsTrainable) || Linears.Any(l => l.Lora is not null) || (Experts?.HasTrainable ?? false);
}
