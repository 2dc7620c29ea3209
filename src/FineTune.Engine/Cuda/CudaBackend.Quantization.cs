namespace FineTune.Engine.Cuda;

// Launchers of Cuda/Kernels/quant.cu: dequantization of QLoRA's frozen weights into a compute-dtype scratch (then the
// ordinary cuBLASLt product reads it) and bitsandbytes' 8-bit block-wise AdamW.
public sealed partial class CudaBackend
{
    public void Dequantize(Tensor dst, QuantizedWeight w)
    {
        if (dst.Length != w.Length) throw new ArgumentException($"dequantize of {w.Rows}×{w.Cols} into {dst}");
        Need(w.Codes, DType.I32);
        if (w.Format == QuantFormat.Fp8E4M3)
        {
            Need(w.Absmax, DType.F32);
            LaunchFlat("fp8.cu", "fp8_dequantize", w.Length, [P(dst), Dt(dst), P(w.Codes), P(w.Absmax), w.Length, FormatCode(Fp8Format.E4M3)]);
            return;
        }
        if (w.Format == QuantFormat.Int8)
        {
            Need(w.Absmax, DType.F32);
            LaunchFlat("quant.cu", "dequantize_int8", w.Length, [P(dst), Dt(dst), P(w.Codes), P(w.Absmax), w.Length, w.Cols]);
            return;
        }
        if (w.BlockSize % 2 != 0) throw new ArgumentException($"4-bit block size must be even, got {w.BlockSize}");
        ulong absmax = 0, qabsmax = 0, code2 = 0, absmax2 = 0;
        float offset = 0f;
        int nestedBlock = 1;
        if (w.Nested is { } nested)
        {
            Need(w.Absmax, DType.I32); Need(nested.Code, DType.F32); Need(nested.Absmax2, DType.F32);
            qabsmax = P(w.Absmax); code2 = P(nested.Code); absmax2 = P(nested.Absmax2);
            offset = nested.Offset; nestedBlock = nested.BlockSize;
        }
        else
        {
            Need(w.Absmax, DType.F32);
            absmax = P(w.Absmax);
        }
        // The bf16 path stores both values of a byte as one 4-byte word: dst must start 4-byte aligned.
        if (dst.DType == DType.BF16 && (P(dst) & 3) != 0) throw new ArgumentException($"dequantize target {dst} is not 4-byte aligned");
        LaunchFlat("quant.cu", "dequantize_4bit", (w.Length + 1) / 2,
            [P(dst), Dt(dst), P(w.Codes), absmax, qabsmax, code2, absmax2, offset, nestedBlock, w.Format == QuantFormat.Fp4 ? 1 : 0,
             w.Length, w.BlockSize]);
    }

    public void AdamW8bit(Tensor param, Tensor grad, Tensor m8, Tensor v8, Tensor absmaxM, Tensor absmaxV, Tensor codeM, Tensor codeV,
        Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step)
    {
        Need(param, DType.F32); Need(grad, DType.F32); Need(m8, DType.I32); Need(v8, DType.I32);
        Need(absmaxM, DType.F32); Need(absmaxV, DType.F32); Need(codeM, DType.F32); Need(codeV, DType.F32);
        SameLength(param, grad);
        if (step.Step < 1) throw new ArgumentOutOfRangeException(nameof(step), $"AdamW steps count from 1 (bias correction 1 − β^t), got {step.Step}");
        long n = param.Length;
        int blocks = checked((int)((n + Optimizer8bit.BlockSize - 1) / Optimizer8bit.BlockSize));
        // The step constants come from the host (the CPU backend's bits); the clipping factor is applied in the kernel.
        var c = Optimizer8bit.Constants(step with { MaxGradNorm = 0f }, 0f);
        bool clip = step.MaxGradNorm > 0 && gradNormSquared is not null;
        Launch("quant.cu", "adamw8bit_step", (blocks, 1, 1), Optimizer8bit.BlockSize,
            [P(param), P(grad), P(m8), P(v8), P(absmaxM), P(absmaxV), P(codeM), P(codeV),
             computeCopy is null ? 0UL : P(computeCopy), computeCopy is null ? 0 : Dt(computeCopy), n,
             c.Beta1, c.Beta2, c.OneMinusBeta1, c.OneMinusBeta2, c.StepSize, c.EpsTimesCorrection2, c.Decay, c.GradScale,
             clip ? P(gradNormSquared!) : 0UL, clip ? step.MaxGradNorm : 0f]);
    }
}
