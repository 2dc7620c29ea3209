namespace FineTune.Models;

/// <summary>Where a model's initial weights come from: a safetensors checkpoint, or generated values.</summary>
public interface IWeightSource
{
    bool Contains(string name);

    /// <summary>
    /// Reads tensor <paramref name="name"/> (HF name, e.g. model.layers.0.self_attn.q_proj.weight) as float32
    /// into <paramref name="destination"/>; throws, naming the file and tensor, when it is missing or its shape differs.
    /// </summary>
    void Read(string name, ReadOnlySpan<int> shape, Span<float> destination);
}

/// <summary>
/// Deterministic random weights for tests and benchmarks: normal(0, std) per tensor from (seed, name);
/// RMSNorm weights are 1 plus small noise so norms are non-trivial.
/// </summary>
public sealed class RandomWeights(int seed, float std = 0.02f) : IWeightSource
{
    public bool Contains(string name) => true;

    public unsafe void Read(string name, ReadOnlySpan<int> shape, Span<float> destination)
    {
        ulong s = Seeds.Mix((ulong)seed, Seeds.Hash(name));
        bool norm = name.EndsWith("norm.weight", StringComparison.Ordinal);
        int n = destination.Length;
        float sd = std;
        // Each value depends on (seed, name, index) only, so filling chunks on all cores gives the same bytes
        // (a 7B shape has billions of values).
        fixed (float* p = destination)
        {
            float* d = p;
            Parallel.For(0, (n + 65535) / 65536, c =>
            {
                int end = Math.Min(n, (c + 1) * 65536);
                for (int i = c * 65536; i < end; i++)
                {
                    // Box–Muller from two counter-based uniforms.
                    double u1 = 1.0 - Seeds.Uniform(s, 2L * i), u2 = Seeds.Uniform(s, 2L * i + 1);
                    double z = Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
                    d[i] = norm ? 1f + 0.1f * (float)z : sd * (float)z;
                }
            });
        }
    }
}

/// <summary>
/// Uniform random weights with the standard deviation of normal(0, <paramref name="std"/>), norm weights 1: fast enough
/// to fill an 8B model on all cores (benchmarks; each value depends on seed, name and index only).
/// </summary>
public sealed class UniformRandomWeights(ulong seed, float std = 0.02f) : IWeightSource
{
    public bool Contains(string name) => true;

    public unsafe void Read(string name, ReadOnlySpan<int> shape, Span<float> destination)
    {
        if (name.EndsWith("norm.weight", StringComparison.Ordinal)) { destination.Fill(1f); return; }
        ulong s = Seeds.Mix(seed, Seeds.Hash(name));
        float amp = std * 1.7320508f; // uniform(−a, a) has std a/√3
        int n = destination.Length;
        fixed (float* p = destination)
        {
            float* d = p;
            Parallel.For(0, (n + 65535) / 65536, c =>
            {
                int end = Math.Min(n, (c + 1) * 65536);
                for (int i = c * 65536; i < end; i++)
                    d[i] = amp * (float)((long)(Seeds.Mix(s, (ulong)i) >> 11) * (2.0 / (1UL << 53)) - 1.0);
            });
        }
    }
}

/// <summary>Counter-based seeding: values depend only on (seed, counter), never on call order.</summary>
public static class Seeds
{
    public static ulong Mix(ulong a, ulong b)
    {
        ulong z = a * 0x9E3779B97F4A7C15UL + b + 0x632BE59BD9B4E019UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>FNV-1a of the UTF-16 code units: a stable (process-independent) hash of a name.</summary>
    public static ulong Hash(string s)
    {
        ulong h = 14695981039346656037UL;
        foreach (char c in s)
        {
            h ^= c;
            h *= 1099511628211UL;
        }
        return h;
    }

    /// <summary>Uniform in [0, 1) with 53 bits from (seed, index).</summary>
    public static double Uniform(ulong seed, long index) => (Mix(seed, (ulong)index) >> 11) * (1.0 / (1UL << 53));
}
