namespace FineTune.Models.Tests;

/// <summary>
/// The whole-model finite-difference check every gradient test shares: the analytic gradients a backward left in the
/// model's trainable parameters against central differences of a scalar loss, over a few random coordinates of
/// every trainable parameter taken as one vector: ‖g − ĝ‖/‖ĝ‖.
/// </summary>
internal static class ParameterGradientCheck
{
    /// <summary>
    /// Call after the backward: samples up to <paramref name="perParameter"/> coordinates of each parameter (a
    /// <see cref="Random"/> of <paramref name="seed"/>), perturbs each by ±<paramref name="h"/> and re-evaluates
    /// <paramref name="loss"/>. Two-point differences (error O(h²)) or, with <paramref name="fivePoint"/>, the five-point
    /// stencil (−L(+2h) + 8L(+h) − 8L(−h) + L(−2h))/12h (error O(h⁴)).
    /// </summary>
    public static double RelativeError(CausalLM model, Func<double> loss, int perParameter, float h, int seed, bool fivePoint = false)
    {
        var analytic = new List<float>();
        var numeric = new List<double>();
        var rng = new Random(seed);
        foreach (var p in model.TrainableParameters)
        {
            float[] g = TinyModels.Grad(model, p);
            float[] value = model.ReadParameter(p.HfName);
            for (int s = 0; s < Math.Min(perParameter, value.Length); s++)
            {
                int i = rng.Next(value.Length);
                float keep = value[i];
                double At(float x)
                {
                    value[i] = x;
                    model.WriteParameter(p.HfName, value);
                    return loss();
                }
                double d = fivePoint
                    ? (-At(keep + 2 * h) + 8 * At(keep + h) - 8 * At(keep - h) + At(keep - 2 * h)) / (12.0 * h)
                    : (At(keep + h) - At(keep - h)) / (2.0 * h);
                value[i] = keep;
                model.WriteParameter(p.HfName, value);
                analytic.Add(g[i]);
                numeric.Add(d);
            }
        }
        double num = 0, den = 0;
        for (int i = 0; i < analytic.Count; i++)
        {
            num += (analytic[i] - numeric[i]) * (analytic[i] - numeric[i]);
            den += numeric[i] * numeric[i];
        }
        Assert.True(den > 1e-6, "gradients are all zero: the check would prove nothing");
        return Math.Sqrt(num / den);
    }
}
