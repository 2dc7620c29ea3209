using System.Numerics.Tensors;

namespace FineTune.Engine.Cpu;

public sealed unsafe partial class CpuBackend
{
    /// <summary>offset + w as a new array (gemma's (1 + w)), or null when the offset is 0 and w is used as it is.</summary>
    private static float[]? ShiftedWeight(float* pw, int c, float offset)
    {
        if (offset == 0f) return null;
        var shifted = new float[c];
        TensorPrimitives.Add(new ReadOnlySpan<float>(pw, c), offset, shifted);
        return shifted;
    }

    // RMSNorm over rows of width C = weight.Length: rstd = 1/sqrt(mean(x²) + eps), y = x·rstd·(offset + w).
    public void RmsNorm(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset = 0f)
    {
        int c = (int)weight.Length;
        int rows = (int)(x.Length / c);
        SameLength(y, x);
        if (rstd.Length < rows) throw new ArgumentException($"rstd {rstd} has fewer than {rows} rows");
        float* py = F(y), px = F(x), pw = F(weight), pr = F(rstd);
        float[]? shifted = ShiftedWeight(pw, c, weightOffset);
        ForRange(rows, Math.Max(1, 8192 / c), (s, e) =>
        {
            var w = shifted is null ? new ReadOnlySpan<float>(pw, c) : shifted;
            for (int r = s; r < e; r++)
            {
                var xr = new ReadOnlySpan<float>(px + (long)r * c, c);
                var yr = new Span<float>(py + (long)r * c, c);
                float inv = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xr) / c + eps);
                pr[r] = inv;
                TensorPrimitives.Multiply(xr, inv, yr);
                TensorPrimitives.Multiply(yr, w, yr);
            }
        });
    }

    // resid = a + b, then RMSNorm of resid; per row, so the sum is still in cache when the norm reads it.
    public void ResidualRmsNorm(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset = 0f)
    {
        int c = (int)weight.Length;
        int rows = (int)(a.Length / c);
        SameLength(resid, a); SameLength(b, a); SameLength(y, a);
        if (rstd.Length < rows) throw new ArgumentException($"rstd {rstd} has fewer than {rows} rows");
        float* pres = F(resid), py = F(y), pa = F(a), pb = F(b), pw = F(weight), pr = F(rstd);
        float[]? shifted = ShiftedWeight(pw, c, weightOffset);
        ForRange(rows, Math.Max(1, 8192 / c), (s, e) =>
        {
            var w = shifted is null ? new ReadOnlySpan<float>(pw, c) : shifted;
            for (int r = s; r < e; r++)
            {
                long at = (long)r * c;
                var rr = new Span<float>(pres + at, c);
                var yr = new Span<float>(py + at, c);
                // Exact overlap of resid with a or b is allowed by TensorPrimitives (element i is read before written).
                TensorPrimitives.Add(new ReadOnlySpan<float>(pa + at, c), new ReadOnlySpan<float>(pb + at, c), rr);
                float inv = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(rr) / c + eps);
                pr[r] = inv;
                TensorPrimitives.Multiply(rr, inv, yr);
                TensorPrimitives.Multiply(yr, w, yr);
            }
        });
    }

    // x̂ = x·rstd, g = w⊙dy: dx += rstd·(g − x̂·mean(g⊙x̂)); dw += Σ_rows dy⊙x̂.
    public void RmsNormBackward(Tensor dx, Tensor? dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd, float weightOffset = 0f, bool accumulate = true)
    {
        int c = (int)weight.Length;
        int rows = (int)(x.Length / c);
        SameLength(dx, x); SameLength(dy, x);
        float* pdx = F(dx), pdy = F(dy), px = F(x), pw = F(weight), pr = F(rstd);
        float[]? shifted = ShiftedWeight(pw, c, weightOffset);
        ForRange(rows, Math.Max(1, 4096 / c), (s, e) =>
        {
            float[] tmp = System.Buffers.ArrayPool<float>.Shared.Rent(c);
            try
            {
                var g = new Span<float>(tmp, 0, c);
                var w = shifted is null ? new ReadOnlySpan<float>(pw, c) : shifted;
                for (int r = s; r < e; r++)
                {
                    var xr = new ReadOnlySpan<float>(px + (long)r * c, c);
                    var dyr = new ReadOnlySpan<float>(pdy + (long)r * c, c);
                    var dxr = new Span<float>(pdx + (long)r * c, c);
                    float inv = pr[r];
                    if (!accumulate) dxr.Clear();
                    TensorPrimitives.Multiply(dyr, w, g);
                    float mean = TensorPrimitives.Dot(g, xr) * inv / c; // mean(g⊙x̂)
                    // dx += inv·g − (inv²·mean)·x
                    TensorPrimitives.MultiplyAdd(g, inv, dxr, dxr);
                    TensorPrimitives.MultiplyAdd(xr, -inv * inv * mean, dxr, dxr);
                }
            }
            finally { System.Buffers.ArrayPool<float>.Shared.Return(tmp); }
        });
        if (dweight is null) return;
        float* pdw = F(dweight);
        // Column blocks over threads, rows in order → deterministic.
        ForRange(c, 16, (s, e) =>
        {
            for (int r = 0; r < rows; r++)
            {
                float inv = pr[r];
                float* xr = px + (long)r * c, dyr = pdy + (long)r * c;
                for (int j = s; j < e; j++) pdw[j] += dyr[j] * xr[j] * inv;
            }
        });
    }

    public void Rope(Tensor x, Tensor positions, Tensor cos, Tensor sin, int headDim, bool inverse)
    {
        int half = headDim / 2;
        int n = (int)positions.Length;
        int width = (int)(x.Length / n);
        int heads = width / headDim;
        int maxPos = cos.Rows;
        if (cos.Cols != half || sin.Cols != half) throw new ArgumentException($"rope tables {cos}/{sin} must have headDim/2 = {half} columns");
        float* px = F(x), pc = F(cos), ps = F(sin);
        int* pp = I(positions);
        float sign = inverse ? -1f : 1f;
        ForRange(n, 16, (s, e) =>
        {
            for (int t = s; t < e; t++)
            {
                int pos = pp[t];
                if ((uint)pos >= (uint)maxPos) throw new ArgumentOutOfRangeException(nameof(positions), $"position {pos} at token {t} exceeds the rope table of {maxPos}");
                float* cr = pc + (long)pos * half, sr = ps + (long)pos * half;
                for (int h = 0; h < heads; h++)
                {
                    float* v = px + (long)t * width + h * headDim;
                    for (int i = 0; i < half; i++)
                    {
                        float a = v[i], b = v[i + half], co = cr[i], si = sign * sr[i];
                        v[i] = a * co - b * si;
                        v[i + half] = b * co + a * si;
                    }
                }
            }
        });
    }

    public void CrossEntropy(Tensor logits, Tensor labels, Tensor lossSum, float gradScale, bool computeGrad)
    {
        int v = logits.Cols, n = logits.Rows;
        if (labels.Length != n) throw new ArgumentException($"labels {labels} do not match logits {logits}");
        float* pl = F(logits);
        int* py = I(labels);
        double[] rowLoss = System.Buffers.ArrayPool<double>.Shared.Rent(n);
        try
        {
            ForRange(n, 1, (s, e) =>
            {
                for (int r = s; r < e; r++)
                    rowLoss[r] = SoftmaxCrossEntropyRow(new Span<float>(pl + (long)r * v, v), py[r], r, gradScale, computeGrad);
            });
            double total = 0;
            for (int r = 0; r < n; r++) total += rowLoss[r];
            F(lossSum)[0] += (float)total;
        }
        finally { System.Buffers.ArrayPool<double>.Shared.Return(rowLoss); }
    }

    // logProbs[r] = log_softmax(logits[r])[labels[r]] = −(the row's cross-entropy); with gradScales the row ends as
    // gradScales[r]·(softmax − onehot), the same scratch use as CrossEntropy (one row routine serves both).
    public void LabelLogProbs(Tensor logits, Tensor labels, Tensor logProbs, Tensor? gradScales)
    {
        int v = logits.Cols, n = logits.Rows;
        if (labels.Length != n) throw new ArgumentException($"labels {labels} do not match logits {logits}");
        if (logProbs.DType != DType.F32 || logProbs.Length != n) throw new ArgumentException($"logProbs {logProbs} must be F32 with one value per row of {logits}");
        if (gradScales is not null && (gradScales.DType != DType.F32 || gradScales.Length != n))
            throw new ArgumentException($"gradScales {gradScales} must be F32 with one value per row of {logits}");
        float* pl = F(logits), po = F(logProbs), ps = gradScales is null ? null : F(gradScales);
        int* py = I(labels);
        ForRange(n, 1, (s, e) =>
        {
            for (int r = s; r < e; r++)
            {
                double loss = SoftmaxCrossEntropyRow(new Span<float>(pl + (long)r * v, v), py[r], r, ps is null ? 0f : ps[r], ps is not null);
                po[r] = py[r] == -100 ? 0f : -(float)loss;
            }
        });
    }

    /// <summary>
    /// −log softmax(row)[label] (0 for label −100); the row is scratch and, with computeGrad, ends as
    /// gradScale·(softmax − onehot) (zeros for an ignored label).
    /// </summary>
    private static double SoftmaxCrossEntropyRow(Span<float> row, int label, int r, float gradScale, bool computeGrad)
    {
        int v = row.Length;
        if (label == -100)
        {
            if (computeGrad) row.Clear();
            return 0;
        }
        if ((uint)label >= (uint)v) throw new ArgumentOutOfRangeException("labels", $"label {label} in row {r} is outside the vocabulary of {v}");
        float max = TensorPrimitives.Max(row);
        float target = row[label];
        // softmax in place: p = exp(x − max) / Σ
        TensorPrimitives.Subtract(row, max, row);
        TensorPrimitives.Exp(row, row);
        float sum = TensorPrimitives.Sum(row);
        double loss = Math.Log(sum) + max - target;
        if (computeGrad)
        {
            TensorPrimitives.Multiply(row, gradScale / sum, row);
            row[label] -= gradScale;
        }
        return loss;
    }
}
