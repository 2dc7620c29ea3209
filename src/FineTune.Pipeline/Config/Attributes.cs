namespace FineTune.Pipeline.Config;

/// <summary>
/// A list-valued key that also accepts one value: a string list takes one string split at commas (LLaMA-Factory writes
/// <c>lora_target: q_proj,v_proj</c>), an enum list one name.
/// </summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class ScalarOrListAttribute : Attribute
{
    /// <summary>
    /// A list of one value is fingerprinted as that value alone, so a key that used to be a scalar keeps the
    /// fingerprints (and lock files) it had, and <c>key: x</c> and <c>key: [x]</c> are the same setting.
    /// </summary>
    public bool FingerprintOneAsScalar { get; set; }
}

/// <summary>
/// A setting that does not change a stage's result — where it runs (device), how an interrupted run continues
/// (resume_from_checkpoint), or only what a run logs, plots and keeps on the side (logging_steps, plot_loss, save_steps,
/// save_total_limit) — so it stays out of the fingerprint and the lock file: changing it re-runs nothing.
/// </summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class NotFingerprintedAttribute : Attribute;

/// <summary>Overrides the snake_case spelling of a key or enum value.</summary>
[AttributeUsage(AttributeTargets.Property | AttributeTargets.Field)]
public sealed class YamlNameAttribute(string name) : Attribute
{
    public string Name { get; } = name;
}

/// <summary>
/// A key that stays out of the fingerprint (and the lock) while it is unset, so that adding it to a record keeps the
/// fingerprints and lock bytes of every pipeline that does not use it (<c>stages.register.dataset</c>).
/// </summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class OmittedWhenUnsetAttribute : Attribute;
