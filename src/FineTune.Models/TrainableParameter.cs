using FineTune.Engine;

namespace FineTune.Models;

public enum ParameterRole { Weight, Bias, Norm, Embedding, LoraA, LoraB }

/// <summary>
/// A parameter the optimizer updates. <see cref="Name"/> is the name it is saved under: PEFT's adapter key
/// (base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight) for LoRA and modules_to_save, the HF key
/// (model.layers.0.mlp.down_proj.weight) for full and freeze. <see cref="Value"/> is what the forward reads
/// (compute dtype); <see cref="Master"/> is the F32 copy AdamW updates (the same tensor when the compute dtype is F32).
/// <see cref="Grad"/>, <see cref="M"/>, <see cref="V"/> are F32 and zero at start; a model built with
/// <see cref="TrainingSetup.ShardedOptimizerStates"/> has no <see cref="M"/>, <see cref="V"/> (ZeRO holds them in shards);
/// one built with <see cref="TrainingSetup.ShardedParameters"/> (ZeRO-3) has no whole <see cref="Master"/> either: its
/// <see cref="Value"/> and <see cref="Grad"/> are views of its group's gather windows, valid while the group is gathered
/// (<see cref="Shard"/>), and its master lives in the group's shards.
/// </summary>
public sealed class TrainableParameter
{
    internal TrainableParameter(string name, string hfName, int[] shape, ParameterRole role, Tensor value, Tensor? master, Tensor grad, Tensor? m, Tensor? v)
    {
        Name = name;
        HfName = hfName;
        Shape = shape;
        Role = role;
        Value = value;
        _master = master;
        Grad = grad;
        _m = m;
        _v = v;
    }

    public string Name { get; }
    /// <summary>Name of the module weight in the HF model (LoRA: the adapted module's weight name + lora_A/lora_B).</summary>
    public string HfName { get; }
    public IReadOnlyList<int> Shape { get; }
    public ParameterRole Role { get; }
    public Tensor Value { get; }
    public Tensor Master => _master ?? throw new InvalidOperationException(
        $"{Name}: under ZeRO-3 no rank holds the whole master weights; gather them through DataParallel.GatherParameters.");
    readonly Tensor? _master;
    public Tensor Grad { get; }
    /// <summary>ZeRO-3: the group this parameter is gathered with and where it starts in the group's flat layout; null when whole.</summary>
    public ParameterShard? Shard { get; internal init; }

    readonly Tensor? _m, _v;
    public Tensor M => _m ?? throw NoMoments();
    public Tensor V => _v ?? throw NoMoments();
    /// <summary>False when the model was built with <see cref="TrainingSetup.ShardedOptimizerStates"/>.</summary>
    public bool HasMoments => _m is not null;

    InvalidOperationException NoMoments() =>
        new($"{Name}: the model holds no optimizer moments (ShardedOptimizerStates: ZeRO's shards hold them); step it through DataParallel.");
    public long Length => Value.Length;

    /// <summary>HF Trainer's rule: no weight decay on biases and normalisation weights.</summary>
    public bool WeightDecay => Role is not (ParameterRole.Bias or ParameterRole.Norm);

    /// <summary>adamw_8bit: M and V hold bitsandbytes' 8-bit codes (I32-held bytes) with these block absmax; null: F32 moments.</summary>
    public EightBitMoments? EightBit { get; internal set; }

    /// <summary>Bytes of optimizer state this model holds (the two moments and, when 8-bit, their block absmax; 0 when sharded).</summary>
    public long StateBytes => !HasMoments ? 0 : EightBit is { } e ? 2 * Length + 4 * (e.AbsmaxM.Length + e.AbsmaxV.Length) : 8 * Length;

    /// <summary>What an F32 AdamW update of this parameter reads and writes: master, gradient, moments and, when the forward reads another dtype, <see cref="Value"/>.</summary>
    public AdamWTensors AdamWTensors => new(Master, Grad, M, V, ReferenceEquals(Value, Master) ? null : Value);

    /// <summary>
    /// One AdamW update (backend op); gradNormSquared feeds clipping when step.MaxGradNorm &gt; 0. A whole model steps
    /// through <see cref="CausalLM.OptimizerStep"/> (one launch for every F32 parameter).
    /// </summary>
    public void Step(AdamWStep step, Tensor? gradNormSquared = null)
    {
        var copy = ReferenceEquals(Value, Master) ? null : Value;
        if (EightBit is { } e) Value.Backend.AdamW8bit(Master, Grad, M, V, e.AbsmaxM, e.AbsmaxV, e.CodeM, e.CodeV, copy, gradNormSquared, step);
        else
        {
            var t = AdamWTensors;
            Value.Backend.AdamW(t.Param, t.Grad, t.M, t.V, t.ComputeCopy, gradNormSquared, step);
        }
    }
}

/// <summary>A ZeRO-3 parameter's place: elements [Offset, Offset + Length) of <paramref name="Group"/>'s flat layout.</summary>
public sealed record ParameterShard(ShardedGroup Group, long Offset);

/// <summary>
/// bitsandbytes' 8-bit block-wise moments of one parameter: absmax per 256 values (F32) and the code books, bnb's
/// signed dynamic map for m and its unsigned one for v (F32 [256], shared by the model).
/// </summary>
public sealed record EightBitMoments(Tensor AbsmaxM, Tensor AbsmaxV, Tensor CodeM, Tensor CodeV);
