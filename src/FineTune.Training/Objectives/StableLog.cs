namespace FineTune.Training.Objectives;

/// <summary>
/// The log-space functions the objectives need, in forms that neither overflow nor lose the small end.
/// .NET's double.ExpM1 / double.LogP1 are exp(x)−1 and log(1+x) as written, so small arguments use Kahan's forms.
/// </summary>
internal static class StableLog
{
    /// <summary>log(1 + x), exact to rounding for small x (Kahan: log(u)·x/(u−1) with u = 1 + x).</summary>
    public static double Log1p(double x)
    {
        double u = 1.0 + x;
        return u == 1.0 ? x : Math.Log(u) * x / (u - 1.0);
    }

    /// <summary>exp(x) − 1, exact to rounding for small x (Kahan: (u−1)·x/log(u) with u = eˣ).</summary>
    public static double Expm1(double x)
    {
        double u = Math.Exp(x);
        if (u == 1.0) return x;
        double um1 = u - 1.0;
        return um1 == -1.0 ? -1.0 : um1 * x / Math.Log(u);
    }

    /// <summary>softplus(x) = log(1 + eˣ) = max(x, 0) + log1p(e^−|x|).</summary>
    public static double Softplus(double x) => Math.Max(x, 0.0) + Log1p(Math.Exp(-Math.Abs(x)));

    /// <summary>log σ(x) = −softplus(−x); its derivative is σ(−x).</summary>
    public static double LogSigmoid(double x) => -Softplus(-x);

    /// <summary>σ(x), evaluated on the side where the exponential cannot overflow.</summary>
    public static double Sigmoid(double x)
    {
        if (x >= 0) return 1.0 / (1.0 + Math.Exp(-x));
        double e = Math.Exp(x);
        return e / (1.0 + e);
    }

    /// <summary>
    /// The largest average log-prob ORPO's odds take: log(1 − eˣ) is −∞ at x = 0 (a sequence the model is sure of),
    /// where torch gives inf/nan. Clamping x to ≤ −1e−6 (per-token probability 0.999999) keeps the odds finite;
    /// the clamp only acts there, and its gradient is 0 where it acts, as torch.clamp's is.
    /// </summary>
    public const double MaxOddsLogp = -1e-6;

    /// <summary>log(1 − eˣ) for x &lt; 0 (Mächler 2012): log(−expm1(x)) near 0, log1p(−eˣ) further out.</summary>
    public static double Log1mExp(double x) =>
        x > -Math.Log(2.0) ? Math.Log(-Expm1(x)) : Log1p(-Math.Exp(x));

    /// <summary>d/dx log(1 − eˣ) = −eˣ/(1 − eˣ) = −1/expm1(−x).</summary>
    public static double Log1mExpDerivative(double x) => -1.0 / Expm1(-x);
}

/// <summary>Shape checks on what the seam hands an objective: a wrong shape is a bug in the caller, said plainly.</summary>
internal static class ObjectiveInputs
{
    public static T[] Require<T>(T[]? values, string name, string objective, int? count = null)
    {
        if (values is null)
            throw new ArgumentException($"{objective}: the batch has no {name}.", name);
        if (values.Length == 0)
            throw new ArgumentException($"{objective}: the batch is empty ({name} has no elements).", name);
        if (count is int n && values.Length != n)
            throw new ArgumentException($"{objective}: {name} has {values.Length} elements, expected {n} (one per example).", name);
        return values;
    }

    /// <summary>The policy's pair inputs every pairwise loss reads: chosen and rejected log-prob sums and token counts, one per pair.</summary>
    public static (double[] Chosen, double[] Rejected, double[] ChosenTokens, double[] RejectedTokens) PolicyPairs(PreferenceBatch batch, string objective)
    {
        var pc = Require(batch.PolicyChosenLogps, nameof(batch.PolicyChosenLogps), objective);
        int n = pc.Length;
        return (pc, Require(batch.PolicyRejectedLogps, nameof(batch.PolicyRejectedLogps), objective, n),
            RequireTokens(batch.ChosenTokens, nameof(batch.ChosenTokens), objective, n),
            RequireTokens(batch.RejectedTokens, nameof(batch.RejectedTokens), objective, n));
    }

    /// <summary>Token counts must be ≥ 1: a response that truncation emptied has no log-prob to train on.</summary>
    public static double[] RequireTokens(double[]? values, string name, string objective, int count)
    {
        var tokens = Require(values, name, objective, count);
        for (int i = 0; i < tokens.Length; i++)
            if (!(tokens[i] >= 1))
                throw new ArgumentException($"{objective}: example {i} has {tokens[i]} {name}; every response needs at least one token (cutoff_len may have cut it away).", name);
        return tokens;
    }
}
