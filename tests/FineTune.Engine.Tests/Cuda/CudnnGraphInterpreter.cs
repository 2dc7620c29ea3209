using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

/// <summary>
/// Evaluates a <see cref="CudnnGraph"/> on the CPU in f32, with the semantics the graph is written for: every tensor
/// is addressed through its strides (so a reshape re-reads the same memory through other strides); matmuls,
/// pointwise operations and reductions broadcast a dimension of size 1, and map a dimension of n onto one of m
/// (GQA's heads) by index·n/m; GEN_INDEX gives the index along its axis; BINARY_SELECT is T ? X : B.
/// Memory tensors take their contents from <c>memory</c> by name; outputs land there too.
/// </summary>
internal static class CudnnGraphInterpreter
{
    public static void Run(CudnnGraph g, Dictionary<string, float[]> memory)
    {
        var values = new Dictionary<long, float[]>();
        foreach (var t in g.Tensors)
        {
            if (t.IsByValue) values[t.Uid] = [t.Value!.Value];
            else if (!t.IsVirtual && memory.TryGetValue(t.Name, out var m)) values[t.Uid] = m;
        }
        float[] Storage(CudnnTensor t)
        {
            if (values.TryGetValue(t.Uid, out var v)) return v;
            v = new float[Span(t)];
            values[t.Uid] = v;
            if (!t.IsVirtual) memory[t.Name] = v;
            return v;
        }
        foreach (var op in g.Operations)
        {
            switch (op)
            {
                case CudnnMatmul mm: Matmul(mm, Storage(mm.A), Storage(mm.B), Storage(mm.C)); break;
                case CudnnPointwise p:
                {
                    var x = Storage(p.X);
                    var b = p.B is null ? null : Storage(p.B);
                    var c = p.T is null ? null : Storage(p.T);
                    var y = Storage(p.Y);
                    ForEach(p.Y.Dims, idx =>
                    {
                        float xv = x[Offset(p.X, idx, p.Y.Dims)];
                        float bv = b is null ? 0 : b[Offset(p.B!, idx, p.Y.Dims)];
                        y[Offset(p.Y, idx, p.Y.Dims)] = p.Mode switch
                        {
                            CudnnPointwiseMode.ADD => xv + bv,
                            CudnnPointwiseMode.MUL => xv * bv,
                            CudnnPointwiseMode.SUB => xv - bv,
                            CudnnPointwiseMode.DIV => xv / bv,
                            CudnnPointwiseMode.EXP => MathF.Exp(xv),
                            CudnnPointwiseMode.LOG => MathF.Log(xv),
                            CudnnPointwiseMode.IDENTITY => xv,
                            CudnnPointwiseMode.GEN_INDEX => idx[(int)p.Axis!.Value],
                            CudnnPointwiseMode.CMP_GE => xv >= bv ? 1 : 0,
                            CudnnPointwiseMode.BINARY_SELECT => c![Offset(p.T!, idx, p.Y.Dims)] != 0 ? xv : bv,
                            _ => throw new NotSupportedException(p.Mode.ToString()),
                        };
                    });
                    break;
                }
                case CudnnReduce r:
                {
                    var x = Storage(r.X);
                    var y = Storage(r.Y);
                    ForEach(r.Y.Dims, idx => y[Offset(r.Y, idx, r.Y.Dims)] = r.Mode == CudnnReduction.MAX ? float.NegativeInfinity : 0);
                    ForEach(r.X.Dims, idx =>
                    {
                        ref float acc = ref y[Offset(r.Y, idx, r.X.Dims)];
                        float xv = x[Offset(r.X, idx, r.X.Dims)];
                        acc = r.Mode == CudnnReduction.MAX ? MathF.Max(acc, xv) : acc + xv;
                    });
                    break;
                }
                case CudnnReshape s:
                    // Same memory, other strides: the storage is shared.
                    values[s.Y.Uid] = Storage(s.X);
                    break;
            }
        }
    }

    static void Matmul(CudnnMatmul mm, float[] a, float[] b, float[] c)
    {
        var cd = mm.C.Dims;
        long kDim = mm.A.Dims[3];
        ForEach(cd, idx =>
        {
            double sum = 0;
            for (long k = 0; k < kDim; k++)
            {
                long[] ai = [idx[0], idx[1], idx[2], k], bi = [idx[0], idx[1], k, idx[3]];
                sum += (double)a[Offset(mm.A, ai, [cd[0], cd[1], cd[2], kDim])] * b[Offset(mm.B, bi, [cd[0], cd[1], kDim, cd[3]])];
            }
            c[Offset(mm.C, idx, cd)] = (float)sum;
        });
    }

    // Address of the element of t that index idx (over dims `over`) maps to: size-1 dims broadcast, n of m grouped.
    static long Offset(CudnnTensor t, long[] idx, long[] over)
    {
        if (t.Dims.Length != idx.Length)
            return t.Dims.All(d => d == 1) ? 0 : throw new NotSupportedException($"{t.Name}: rank {t.Dims.Length} against {idx.Length}");
        long off = 0;
        for (int i = 0; i < idx.Length; i++)
        {
            long j = t.Dims[i] == 1 ? 0 : t.Dims[i] == over[i] ? idx[i] : idx[i] * t.Dims[i] / over[i];
            off += j * t.Strides[i];
        }
        return off;
    }

    static long Span(CudnnTensor t)
    {
        long last = 0;
        for (int i = 0; i < t.Dims.Length; i++) last += (t.Dims[i] - 1) * t.Strides[i];
        return last + 1;
    }

    static void ForEach(long[] dims, Action<long[]> body)
    {
        var idx = new long[dims.Length];
        long n = dims.Aggregate(1L, (a, d) => a * d);
        for (long flat = 0; flat < n; flat++)
        {
            long r = flat;
            for (int i = dims.Length - 1; i >= 0; i--) { idx[i] = r % dims[i]; r /= dims[i]; }
            body(idx);
        }
    }
}
