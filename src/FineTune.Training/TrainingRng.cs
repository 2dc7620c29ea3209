namespace FineTune.Training;

/// <summary>
/// xoshiro256** (Blackman and Vigna), seeded through SplitMix64: a small generator whose whole
/// state is four numbers, so checkpoints can save and restore it exactly — which System.Random
/// cannot promise. Used for shuffling and noise; identical seeds give identical streams everywhere.
/// </summary>
public sealed class TrainingRng
{
    ulong _s0, _s1, _s2, _s3;

    public TrainingRng(ulong seed)
    {
        ulong x = seed;
        _s0 = SplitMix64(ref x); _s1 = SplitMix64(ref x); _s2 = SplitMix64(ref x); _s3 = SplitMix64(ref x);
    }

    TrainingRng(ulong[] state) => (_s0, _s1, _s2, _s3) = (state[0], state[1], state[2], state[3]);

    public static TrainingRng FromState(IReadOnlyList<ulong> state)
    {
        if (state.Count != 4) throw new ArgumentException($"An RNG state has 4 words, got {state.Count}.", nameof(state));
        return new TrainingRng([.. state]);
    }

    public ulong[] State => [_s0, _s1, _s2, _s3];

    static ulong SplitMix64(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0; _s3 ^= _s1; _s1 ^= _s2; _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>Uniform in [0, n) without modulo bias (Lemire's multiply-and-reject).</summary>
    public int NextInt(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n));
        ulong bound = (ulong)n;
        ulong threshold = (0UL - bound) % bound;
        while (true)
        {
            ulong r = NextUInt64();
            ulong hi = Math.BigMul(r, bound, out ulong lo);
            if (lo >= threshold) return (int)hi;
        }
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform float in [-1, 1): the distribution NEFTune draws its noise from.</summary>
    public float NextSymmetricSingle() => (float)(NextDouble() * 2.0 - 1.0);

    /// <summary>The order of one epoch: a Fisher–Yates shuffle of 0..count-1 by a generator seeded from (seed, epoch).</summary>
    public static int[] EpochPermutation(ulong seed, int epoch, int count)
    {
        var rng = new TrainingRng(seed ^ (0xD1B54A32D192ED03UL * (ulong)(epoch + 1)));
        var order = new int[count];
        for (int i = 0; i < count; i++) order[i] = i;
        for (int i = count - 1; i > 0; i--)
        {
            int j = rng.NextInt(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }
}
