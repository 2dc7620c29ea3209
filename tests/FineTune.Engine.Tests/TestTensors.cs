using FineTune.Engine;
using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>Host-side helpers: deterministic random data and tensors on a CPU backend.</summary>
internal static class TestTensors
{
    public static float[] Random(int n, int seed, float scale = 1f)
    {
        var r = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(r.NextDouble() * 2 - 1) * scale;
        return a;
    }

    public static Tensor F32(this CpuBackend b, float[] values, params int[] shape)
    {
        var t = b.Allocate(DType.F32, shape);
        b.Upload(t, values);
        return t;
    }

    public static Tensor I32(this CpuBackend b, int[] values, params int[] shape)
    {
        var t = b.Allocate(DType.I32, shape);
        b.Upload(t, values);
        return t;
    }

    public static float[] Read(this CpuBackend b, Tensor t)
    {
        var a = new float[t.Length];
        b.Download(t, a);
        return a;
    }

    /// <summary>‖a − b‖ / max(‖b‖, tiny).</summary>
    public static double RelativeError(float[] a, double[] b)
    {
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++)
        {
            num += (a[i] - b[i]) * (a[i] - b[i]);
            den += b[i] * b[i];
        }
        return Math.Sqrt(num) / Math.Max(Math.Sqrt(den), 1e-12);
    }

    /// <summary>
    /// Central differences of a scalar loss with respect to every element of <paramref name="x"/>:
    /// (L(x + h·e_i) − L(x − h·e_i)) / 2h, re-uploading x after each perturbation.
    /// </summary>
    public static double[] NumericGradient(float[] x, Action<float[]> upload, Func<double> loss, float h = 1e-2f)
    {
        var g = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            float keep = x[i];
            x[i] = keep + h; upload(x);
            double plus = loss();
            x[i] = keep - h; upload(x);
            double minus = loss();
            x[i] = keep; upload(x);
            g[i] = (plus - minus) / (2.0 * h);
        }
        return g;
    }

    /// <summary>Σ w_i·y_i in double: a scalar loss whose gradient with respect to y is w.</summary>
    public static double Dot(float[] y, float[] w)
    {
        double s = 0;
        for (int i = 0; i < y.Length; i++) s += (double)y[i] * w[i];
        return s;
    }
}
