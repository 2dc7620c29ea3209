namespace FineTune.Models.Quantization;

/// <summary>
/// bitsandbytes' LLM.int8 weight storage (Int8Params: CB int8 [out, in] and SCB f32 [out]): the weight is cast to fp16
/// (as Int8Params does before int8_vectorwise_quant), SCB[r] = max_j |w[r, j]|, CB = round_half_even(w·((1/SCB[r])·127)).
/// Dequantized as bnb's MatMul8bitLt backward does: w = CB·(SCB·(1/127)). No outlier columns are kept apart: bnb's
/// backward through a frozen int8 weight uses CB alone too (threshold decomposition only changes bnb's int8 forward).
/// </summary>
public sealed record Int8Rows(int Rows, int Cols, sbyte[] CB, float[] SCB)
{
    public static Int8Rows Quantize(ReadOnlySpan<float> values, int rows, int cols)
    {
        if (values.Length != (long)rows * cols) throw new ArgumentException($"{values.Length} values for a {rows}×{cols} weight");
        var cb = new sbyte[values.Length];
        var scb = new float[rows];
        var half = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            var row = values.Slice(r * cols, cols);
            float max = 0f;
            for (int j = 0; j < cols; j++)
            {
                half[j] = (float)(Half)row[j];
                max = MathF.Max(max, MathF.Abs(half[j]));
            }
            scb[r] = max;
            // bnb's torch path: 127.0 / row_stats, which torch evaluates as row_stats.reciprocal() · 127 (Tensor.__rtruediv__),
            // then round(A·scale) (half to even); a zero row gives 0·∞. 127f / max rounds differently at halves.
            float scale = (1f / max) * 127f;
            for (int j = 0; j < cols; j++)
            {
                float q = MathF.Round(half[j] * scale, MidpointRounding.ToEven);
                cb[r * cols + j] = float.IsNaN(q) ? (sbyte)0 : (sbyte)Math.Clamp(q, -127f, 127f);
            }
        }
        return new Int8Rows(rows, cols, cb, scb);
    }

    public float[] Dequantize()
    {
        var w = new float[CB.Length];
        for (int r = 0; r < Rows; r++)
        {
            float s = SCB[r] * (1f / 127f);
            for (int j = 0; j < Cols; j++) w[r * Cols + j] = CB[r * Cols + j] * s;
        }
        return w;
    }
}
