using System.Numerics.Tensors;

namespace FineTune.Engine.Cpu;

/// <summary>
/// The managed CPU backend: F32 everywhere (BF16 weights are converted when uploaded), SIMD through
/// <see cref="TensorPrimitives"/> and Vector256/512 FMA kernels, work split over threads with
/// <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/>. Every reduction uses a partition that
/// depends only on the problem size, never on thread scheduling, so runs are bit-identical.
/// </summary>
public sealed unsafe partial class CpuBackend : IBackend
{
    private readonly ParallelOptions _parallel;

    public CpuBackend(int? threads = null)
    {
        Threads = Math.Max(1, threads ?? Environment.ProcessorCount);
        _parallel = new ParallelOptions { MaxDegreeOfParallelism = Threads };
    }

    public string Name => "cpu";
    public DType ComputeDType => DType.F32;
    public int Threads { get; }

    public DeviceBuffer AllocateBuffer(long byteLength) => new CpuBuffer(this, byteLength);

    public void Dispose() { }

    // ---- access helpers ----
    private float* F(Tensor t)
    {
        if (t.DType != DType.F32) throw new ArgumentException($"CPU backend: tensor '{t.Name}' is {t.DType}, expected F32");
        return (float*)Ptr(t);
    }

    private int* I(Tensor t)
    {
        if (t.DType != DType.I32) throw new ArgumentException($"CPU backend: tensor '{t.Name}' is {t.DType}, expected I32");
        return (int*)Ptr(t);
    }

    private byte* Ptr(Tensor t)
    {
        if (t.Buffer is not CpuBuffer b || !ReferenceEquals(t.Backend, this))
            throw new ArgumentException($"tensor '{t.Name}' does not belong to this CPU backend");
        return b.Pointer + t.Offset * t.DType.ByteSize();
    }

    private Span<float> FS(Tensor t) => new(F(t), checked((int)t.Length));

    private static void SameLength(Tensor a, Tensor b)
    {
        if (a.Length != b.Length)
            throw new ArgumentException($"length mismatch: {a} vs {b}");
    }

    /// <summary>Runs body(i) for i in [0, count); outputs of different i must not overlap.</summary>
    private void For(int count, Action<int> body)
    {
        if (count == 1 || Threads == 1)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        Parallel.For(0, count, _parallel, body);
    }

    /// <summary>Splits [0, n) into chunks of at least <paramref name="grain"/> items, a count fixed by n alone.</summary>
    private void ForRange(int n, int grain, Action<int, int> body)
    {
        if (n <= 0) return;
        int chunks = Math.Max(1, Math.Min(64, n / Math.Max(1, grain)));
        int per = (n + chunks - 1) / chunks;
        chunks = (n + per - 1) / per;
        For(chunks, c =>
        {
            int start = c * per;
            body(start, Math.Min(n, start + per));
        });
    }

    // ---- transfers ----
    public void Upload(Tensor dst, ReadOnlySpan<float> src)
    {
        if (src.Length != dst.Length) throw new ArgumentException($"upload of {src.Length} values into {dst}");
        src.CopyTo(FS(dst));
    }

    public void Upload(Tensor dst, ReadOnlySpan<int> src)
    {
        if (src.Length != dst.Length) throw new ArgumentException($"upload of {src.Length} values into {dst}");
        src.CopyTo(new Span<int>(I(dst), checked((int)dst.Length)));
    }

    public void Download(Tensor src, Span<float> dst)
    {
        if (dst.Length != src.Length) throw new ArgumentException($"download of {src} into {dst.Length} values");
        FS(src).CopyTo(dst);
    }

    public void Download(Tensor src, Span<int> dst)
    {
        if (dst.Length != src.Length) throw new ArgumentException($"download of {src} into {dst.Length} values");
        new Span<int>(I(src), checked((int)src.Length)).CopyTo(dst);
    }

    public void Synchronize() { }

    // ---- elementwise ----
    public void Zero(Tensor x) => new Span<byte>(Ptr(x), checked((int)(x.Length * x.DType.ByteSize()))).Clear();

    public void Copy(Tensor dst, Tensor src)
    {
        SameLength(dst, src);
        if (dst.DType != src.DType) throw new ArgumentException($"CPU backend copies within one dtype: {src} → {dst}");
        new Span<byte>(Ptr(src), checked((int)(src.Length * src.DType.ByteSize())))
            .CopyTo(new Span<byte>(Ptr(dst), checked((int)(dst.Length * dst.DType.ByteSize()))));
    }

    public void Add(Tensor y, Tensor x, float alpha = 1f)
    {
        SameLength(y, x);
        float* py = F(y), px = F(x);
        ForRange((int)y.Length, 1 << 16, (s, e) =>
        {
            var ys = new Span<float>(py + s, e - s);
            var xs = new ReadOnlySpan<float>(px + s, e - s);
            if (alpha == 1f) TensorPrimitives.Add(ys, xs, ys);
            else TensorPrimitives.MultiplyAdd(xs, alpha, ys, ys);
        });
    }

    public void Scale(Tensor x, float s)
    {
        float* px = F(x);
        ForRange((int)x.Length, 1 << 16, (a, b) =>
        {
            var xs = new Span<float>(px + a, b - a);
            TensorPrimitives.Multiply(xs, s, xs);
        });
    }

    public void AddBias(Tensor y, Tensor bias)
    {
        int cols = (int)bias.Length;
        if (y.Length % cols != 0) throw new ArgumentException($"bias {bias} does not divide {y}");
        int rows = (int)(y.Length / cols);
        float* py = F(y), pb = F(bias);
        ForRange(rows, 64, (s, e) =>
        {
            var b = new ReadOnlySpan<float>(pb, cols);
            for (int r = s; r < e; r++)
            {
                var row = new Span<float>(py + (long)r * cols, cols);
                TensorPrimitives.Add(row, b, row);
            }
        });
    }

    public void BiasBackward(Tensor dbias, Tensor dy)
    {
        int cols = (int)dbias.Length;
        int rows = (int)(dy.Length / cols);
        float* pd = F(dbias), pdy = F(dy);
        // Columns split over threads; each column sums its rows in order → deterministic.
        ForRange(cols, 64, (s, e) =>
        {
            var acc = new Span<float>(pd + s, e - s);
            for (int r = 0; r < rows; r++)
                TensorPrimitives.Add(acc, new ReadOnlySpan<float>(pdy + (long)r * cols + s, e - s), acc);
        });
    }

    // ---- embedding ----
    public void Embedding(Tensor output, Tensor table, Tensor ids)
    {
        int cols = table.Cols, vocab = table.Rows, n = (int)ids.Length;
        float* po = F(output), pt = F(table);
        int* pi = I(ids);
        for (int i = 0; i < n; i++)
        {
            int id = pi[i];
            if ((uint)id >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(ids), $"token id {id} at position {i} is outside the vocabulary of {vocab}");
            new ReadOnlySpan<float>(pt + (long)id * cols, cols).CopyTo(new Span<float>(po + (long)i * cols, cols));
        }
    }

    public void EmbeddingBackward(Tensor dtable, Tensor doutput, Tensor ids)
    {
        int cols = dtable.Cols, n = (int)ids.Length;
        float* pt = F(dtable), pd = F(doutput);
        int* pi = I(ids);
        // Column blocks per thread, rows in order: the scatter-add never races and always sums in one order.
        ForRange(cols, 64, (s, e) =>
        {
            for (int i = 0; i < n; i++)
            {
                var dst = new Span<float>(pt + (long)pi[i] * cols + s, e - s);
                TensorPrimitives.Add(dst, new ReadOnlySpan<float>(pd + (long)i * cols + s, e - s), dst);
            }
        });
    }

    // ---- SwiGLU ----
    public void SwiGlu(Tensor h, Tensor gate, Tensor up)
    {
        SameLength(h, gate); SameLength(h, up);
        float* ph = F(h), pg = F(gate), pu = F(up);
        ForRange((int)h.Length, 1 << 14, (s, e) =>
        {
            for (int i = s; i < e; i++)
            {
                float g = pg[i];
                ph[i] = g / (1f + MathF.Exp(-g)) * pu[i];
            }
        });
    }

    public void SwiGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up)
    {
        float* pdg = F(dgate), pdu = F(dup), pdh = F(dh), pg = F(gate), pu = F(up);
        // silu(g) = g·σ(g); silu'(g) = σ(g)·(1 + g·(1 − σ(g)))
        ForRange((int)dh.Length, 1 << 14, (s, e) =>
        {
            for (int i = s; i < e; i++)
            {
                float g = pg[i], d = pdh[i], u = pu[i]; // read before the stores: in place is allowed
                float sig = 1f / (1f + MathF.Exp(-g));
                float silu = g * sig;
                pdu[i] = d * silu;
                pdg[i] = d * u * sig * (1f + g * (1f - sig));
            }
        });
    }

    // ---- GeGLU ----
    // gelu_tanh(g) = ½·g·(1 + t), t = tanh(u), u = √(2/π)·(g + 0.044715·g³);
    // gelu_tanh'(g) = ½·(1 + t) + ½·g·(1 − t²)·√(2/π)·(1 + 3·0.044715·g²).
    private const float GeluC = 0.7978845608028654f, GeluA = 0.044715f;

    public void GeGlu(Tensor h, Tensor gate, Tensor up)
    {
        SameLength(h, gate); SameLength(h, up);
        float* ph = F(h), pg = F(gate), pu = F(up);
        ForRange((int)h.Length, 1 << 14, (s, e) =>
        {
            for (int i = s; i < e; i++)
            {
                float g = pg[i];
                ph[i] = 0.5f * g * (1f + MathF.Tanh(GeluC * (g + GeluA * g * g * g))) * pu[i];
            }
        });
    }

    public void GeGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up)
    {
        SameLength(dgate, dh); SameLength(dup, dh); SameLength(gate, dh); SameLength(up, dh);
        float* pdg = F(dgate), pdu = F(dup), pdh = F(dh), pg = F(gate), pu = F(up);
        ForRange((int)dh.Length, 1 << 14, (s, e) =>
        {
            for (int i = s; i < e; i++)
            {
                float g = pg[i], d = pdh[i], u = pu[i]; // read before the stores: in place is allowed
                float t = MathF.Tanh(GeluC * (g + GeluA * g * g * g));
                pdu[i] = d * 0.5f * g * (1f + t);
                pdg[i] = d * u * (0.5f * (1f + t) + 0.5f * g * (1f - t * t) * GeluC * (1f + 3f * GeluA * g * g));
            }
        });
    }

    // ---- soft-capping ----
    public void SoftCap(Tensor y, Tensor x, float cap)
    {
        SameLength(y, x);
        if (!(cap > 0f)) throw new ArgumentOutOfRangeException(nameof(cap), $"the soft-cap must be positive, got {cap}");
        float* py = F(y), px = F(x);
        ForRange((int)x.Length, 1 << 14, (s, e) =>
        {
            for (int i = s; i < e; i++) py[i] = cap * MathF.Tanh(px[i] / cap);
        });
    }

    public void SoftCapBackward(Tensor dx, Tensor y, float cap)
    {
        SameLength(dx, y);
        if (!(cap > 0f)) throw new ArgumentOutOfRangeException(nameof(cap), $"the soft-cap must be positive, got {cap}");
        float* pd = F(dx), py = F(y);
        ForRange((int)y.Length, 1 << 14, (s, e) =>
        {
            for (int i = s; i < e; i++)
            {
                float t = py[i] / cap;
                pd[i] *= 1f - t * t;
            }
        });
    }

    // ---- randomness ----
    /// <summary>SplitMix64 finaliser of (seed, index): a counter-based uniform in [0, 1) with 24 bits.</summary>
    internal static float Uniform(ulong seed, long index)
    {
        ulong z = seed + 0x9E3779B97F4A7C15UL * (ulong)(index + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 40) * (1f / (1 << 24));
    }

    public void Dropout(Tensor y, Tensor x, float p, ulong seed)
    {
        SameLength(y, x);
        float* py = F(y), px = F(x);
        float keep = 1f / (1f - p);
        ForRange((int)y.Length, 1 << 14, (s, e) =>
        {
            for (int i = s; i < e; i++) py[i] = Uniform(seed, i) >= p ? px[i] * keep : 0f;
        });
    }

    public void AddUniformNoise(Tensor x, float magnitude, ulong seed)
    {
        float* px = F(x);
        ForRange((int)x.Length, 1 << 14, (s, e) =>
        {
            for (int i = s; i < e; i++) px[i] += magnitude * (2f * Uniform(seed, i) - 1f);
        });
    }

    // ---- optimizer ----
    public void SumOfSquares(Tensor x, Tensor acc)
    {
        float* px = F(x);
        int n = (int)x.Length;
        const int Chunk = 1 << 16;
        int chunks = (n + Chunk - 1) / Chunk;
        double total = 0;
        if (chunks <= 1) total = TensorPrimitives.SumOfSquares(new ReadOnlySpan<float>(px, n));
        else
        {
            var partial = new double[chunks];
            For(chunks, c =>
            {
                int s = c * Chunk, e = Math.Min(n, s + Chunk);
                partial[c] = TensorPrimitives.SumOfSquares(new ReadOnlySpan<float>(px + s, e - s));
            });
            foreach (double v in partial) total += v;
        }
        F(acc)[0] += (float)total;
    }

    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step)
    {
        SameLength(param, grad); SameLength(param, m); SameLength(param, v);
        if (step.Step < 1) throw new ArgumentOutOfRangeException(nameof(step), $"AdamW steps count from 1 (bias correction 1 − β^t), got {step.Step}");
        float* pp = F(param), pg = F(grad), pm = F(m), pv = F(v);
        float* pc = computeCopy is null ? null : F(computeCopy);
        float scale = step.GradScale;
        if (step.MaxGradNorm > 0 && gradNormSquared is not null)
        {
            float norm = scale * MathF.Sqrt(F(gradNormSquared)[0]);
            float coef = step.MaxGradNorm / (norm + 1e-6f);
            if (coef < 1f) scale *= coef;
        }
        float b1 = step.Beta1, b2 = step.Beta2, lr = step.LearningRate, eps = step.Epsilon;
        float decay = 1f - lr * step.WeightDecay;
        float bc1 = 1f - MathF.Pow(b1, step.Step);
        float bc2Sqrt = MathF.Sqrt(1f - MathF.Pow(b2, step.Step));
        float stepSize = lr / bc1;
        ForRange((int)param.Length, 1 << 14, (s, e) =>
        {
            for (int i = s; i < e; i++)
            {
                float g = pg[i] * scale;
                float mi = b1 * pm[i] + (1f - b1) * g;
                float vi = b2 * pv[i] + (1f - b2) * g * g;
                pm[i] = mi; pv[i] = vi;
                float p = pp[i] * decay;
                p -= stepSize * mi / (MathF.Sqrt(vi) / bc2Sqrt + eps);
                pp[i] = p;
                if (pc != null) pc[i] = p;
            }
        });
    }
}
