using System.Runtime.InteropServices;
using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Engine.Cuda;
using FineTune.Models;
using FineTune.Models.Quantization;

namespace FineTune.DeviceChecks;

/// <summary>
/// QLoRA's device operations, CUDA against the CPU backend bit for bit: Dequantize (NF4/FP4, with and without double
/// quantization, int8) into F32 and BF16, and AdamW8bit over three steps (parameters, codes, absmax). And the files
/// tests/device/bnb_reference.py compares with bitsandbytes' algorithm (the "quant" command).
/// </summary>
public static class QuantChecks
{
    static int[] Words(ReadOnlySpan<byte> bytes)
    {
        var w = new int[QuantizedWeight.WordsFor(bytes.Length)];
        bytes.CopyTo(MemoryMarshal.AsBytes(w.AsSpan()));
        return w;
    }

    static Tensor Alloc(IBackend b, List<DeviceBuffer> owned, DType t, params int[] shape)
    {
        long n = 1; foreach (var d in shape) n *= d;
        var buf = b.AllocateBuffer(Math.Max(4, n * t.ByteSize()));
        owned.Add(buf);
        return new Tensor(buf, 0, t, shape);
    }

    static QuantizedWeight Upload(IBackend b, List<DeviceBuffer> owned, BnbFourBitTensor? four, Int8Rows? int8, int rows, int cols)
    {
        if (int8 is not null)
        {
            var cb = Alloc(b, owned, DType.I32, QuantizedWeight.WordsFor(int8.CB.Length));
            var scb = Alloc(b, owned, DType.F32, rows);
            b.Upload(cb, Words(MemoryMarshal.AsBytes(int8.CB.AsSpan())));
            b.Upload(scb, int8.SCB);
            return new QuantizedWeight(QuantFormat.Int8, rows, cols, cb, scb);
        }
        var codes = Alloc(b, owned, DType.I32, QuantizedWeight.WordsFor(four!.Codes.Length));
        b.Upload(codes, Words(four.Codes));
        if (four.Nested is not { } n)
        {
            var am = Alloc(b, owned, DType.F32, (int)four.Blocks);
            b.Upload(am, four.Absmax!);
            return new QuantizedWeight(four.Format, rows, cols, codes, am);
        }
        var q = Alloc(b, owned, DType.I32, QuantizedWeight.WordsFor(n.Codes.Length));
        var am2 = Alloc(b, owned, DType.F32, n.Absmax2.Length);
        var code = Alloc(b, owned, DType.F32, 256);
        b.Upload(q, Words(n.Codes)); b.Upload(am2, n.Absmax2); b.Upload(code, n.Code);
        return new QuantizedWeight(four.Format, rows, cols, codes, q, new NestedAbsmax(am2, code, n.Offset, n.BlockSize));
    }

    static bool SameBits(float[] a, float[] b) => a.Length == b.Length && a.Zip(b).All(p => BitConverter.SingleToInt32Bits(p.First) == BitConverter.SingleToInt32Bits(p.Second));

    public static void Run(CpuBackend cpu, CudaBackend gpu, List<CheckRow> rows)
    {
        var owned = new List<DeviceBuffer>();
        const int r = 896, c = 4864; // a qwen2.5-0.5b MLP weight
        var w = new float[r * c];
        new RandomWeights(3, 0.02f).Read("w", [r, c], w);
        for (int j = 0; j < 64; j++) w[j] = 0f; // one all-zero block
        foreach (var (name, four, int8) in new (string, BnbFourBitTensor?, Int8Rows?)[]
        {
            ("nf4", BnbFourBitTensor.Quantize(w, [r, c], QuantFormat.Nf4, false), null),
            ("nf4+dq", BnbFourBitTensor.Quantize(w, [r, c], QuantFormat.Nf4, true), null),
            ("fp4+dq", BnbFourBitTensor.Quantize(w, [r, c], QuantFormat.Fp4, true), null),
            ("int8", null, Int8Rows.Quantize(w, r, c)),
        })
        {
            var qc = Upload(cpu, owned, four, int8, r, c);
            var qg = Upload(gpu, owned, four, int8, r, c);
            var outC = Alloc(cpu, owned, DType.F32, r, c);
            cpu.Dequantize(outC, qc);
            var expected = new float[r * c];
            cpu.Download(outC, expected);
            foreach (var dt in new[] { DType.F32, DType.BF16 })
            {
                var outG = Alloc(gpu, owned, dt, r, c);
                gpu.Synchronize();
                using var timer = gpu.Device.StartTimer();
                gpu.Dequantize(outG, qg);
                double ms = timer.StopMs();
                var got = new float[r * c];
                gpu.Download(outG, got);
                var want = dt == DType.BF16 ? expected.Select(x => Bf16.ToFloat(Bf16.FromFloat(x))).ToArray() : expected;
                bool pass = SameBits(want, got);
                rows.Add(new CheckRow($"dequantize {name}", dt == DType.BF16 ? "bf16" : "f32", "weight (bit for bit)", r * c, pass ? 0 : 1, 0, pass, ms));
                Console.WriteLine($"{(pass ? "ok  " : "FAIL")} dequantize {name,-8} → {dt,-4} {r}×{c} bit for bit, gpu {ms:F3} ms");
            }
        }

        // AdamW8bit: 3 steps of clipped, decayed updates on a tensor that ends in a partial block.
        int n = 256 * 37 + 91;
        var rng = new Random(5);
        float[] Rand(float s) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * s).ToArray();
        var p0 = Rand(1f);
        int blocks = (n + 255) / 256;
        var states = new Dictionary<IBackend, (Tensor P, Tensor G, Tensor M, Tensor V, Tensor Am, Tensor Av, Tensor Cm, Tensor Cv, Tensor Norm)>();
        foreach (IBackend b in new IBackend[] { cpu, gpu })
        {
            var s = (Alloc(b, owned, DType.F32, n), Alloc(b, owned, DType.F32, n), Alloc(b, owned, DType.I32, QuantizedWeight.WordsFor(n)),
                Alloc(b, owned, DType.I32, QuantizedWeight.WordsFor(n)), Alloc(b, owned, DType.F32, blocks), Alloc(b, owned, DType.F32, blocks),
                Alloc(b, owned, DType.F32, 256), Alloc(b, owned, DType.F32, 256), Alloc(b, owned, DType.F32, 1));
            b.Upload(s.Item1, p0); b.Upload(s.Item7, BnbDynamicMap.Signed); b.Upload(s.Item8, BnbDynamicMap.Unsigned);
            states[b] = s;
        }
        double total = 0;
        for (int t = 1; t <= 3; t++)
        {
            var g = Rand(0.5f);
            float normSq = (float)g.Sum(x => (double)x * x);
            var step = new AdamWStep(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t, GradScale: 1f, MaxGradNorm: 1f);
            foreach (var (b, s) in states)
            {
                b.Upload(s.G, g); b.Upload(s.Norm, [normSq]);
                if (b is CudaBackend)
                {
                    gpu.Synchronize();
                    using var timer = gpu.Device.StartTimer();
                    b.AdamW8bit(s.P, s.G, s.M, s.V, s.Am, s.Av, s.Cm, s.Cv, null, s.Norm, step);
                    total += timer.StopMs();
                }
                else b.AdamW8bit(s.P, s.G, s.M, s.V, s.Am, s.Av, s.Cm, s.Cv, null, s.Norm, step);
            }
        }
        float[] F(IBackend b, Tensor t) { var a = new float[t.Length]; b.Download(t, a); return a; }
        int[] I(IBackend b, Tensor t) { var a = new int[t.Length]; b.Download(t, a); return a; }
        var (sc, sg) = (states[cpu], states[gpu]);
        foreach (var (output, pass) in new[]
        {
            ("param", SameBits(F(cpu, sc.P), F(gpu, sg.P))),
            ("m codes", I(cpu, sc.M).SequenceEqual(I(gpu, sg.M))),
            ("v codes", I(cpu, sc.V).SequenceEqual(I(gpu, sg.V))),
            ("m absmax", SameBits(F(cpu, sc.Am), F(gpu, sg.Am))),
            ("v absmax", SameBits(F(cpu, sc.Av), F(gpu, sg.Av))),
        })
        {
            rows.Add(new CheckRow("adamw8bit (3 steps, clipped)", "f32", output + " (bit for bit)", n, pass ? 0 : 1, 0, pass, total / 3));
            Console.WriteLine($"{(pass ? "ok  " : "FAIL")} adamw8bit {output} bit for bit, gpu {total / 3:F3} ms/step");
        }
        foreach (var b in owned) b.Dispose();
    }

    /// <summary>
    /// Writes quant_inputs.safetensors (bf16-exact weights: normal rows, one outlier row, one all-zero block) and
    /// quant_finetune.safetensors (FineTune's codes, absmax, nested statistics, int8 CB/SCB, the dynamic maps) for
    /// tests/device/bnb_reference.py. CPU only.
    /// </summary>
    public static void WriteReferenceFiles(string outDir)
    {
        Directory.CreateDirectory(outDir);
        const int r = 64, c = 1024;
        var w = new float[r * c];
        new RandomWeights(9, 0.02f).Read("w", [r, c], w);
        for (int j = 0; j < c; j++) w[5 * c + j] *= 40f; // an outlier row
        for (int j = 0; j < 64; j++) w[9 * c + j] = 0f;  // an all-zero block
        for (int i = 0; i < w.Length; i++) w[i] = Bf16.ToFloat(Bf16.FromFloat(w[i]));
        var inputs = new SafetensorsWriter();
        inputs.Add("weight", w, [r, c], SafetensorsDType.BF16);
        inputs.Save(Path.Combine(outDir, "quant_inputs.safetensors"));
        var o = new SafetensorsWriter();
        o.Add("dynamic_map_signed", BnbDynamicMap.Signed, [256]);
        o.Add("dynamic_map_unsigned", BnbDynamicMap.Unsigned, [256]);
        foreach (var (name, format) in new[] { ("nf4", QuantFormat.Nf4), ("fp4", QuantFormat.Fp4) })
        {
            var plain = BnbFourBitTensor.Quantize(w, [r, c], format, false);
            o.AddRaw($"{name}.codes", SafetensorsDType.U8, [plain.Codes.Length], plain.Codes);
            o.Add($"{name}.absmax", plain.Absmax!, [plain.Absmax!.Length]);
            o.Add($"{name}.dequantized", plain.Dequantize(), [r, c]);
            var dq = BnbFourBitTensor.Quantize(w, [r, c], format, true);
            o.AddRaw($"{name}_dq.nested_codes", SafetensorsDType.U8, [dq.Nested!.Codes.Length], dq.Nested.Codes);
            o.Add($"{name}_dq.nested_absmax", dq.Nested.Absmax2, [dq.Nested.Absmax2.Length]);
            o.Add($"{name}_dq.offset", [dq.Nested.Offset], [1]);
            o.Add($"{name}_dq.dequantized", dq.Dequantize(), [r, c]);
        }
        var int8 = Int8Rows.Quantize(w, r, c);
        o.AddRaw("int8.CB", SafetensorsDType.I8, [r, c], MemoryMarshal.AsBytes(int8.CB.AsSpan()));
        o.Add("int8.SCB", int8.SCB, [r]);
        o.Add("int8.dequantized", int8.Dequantize(), [r, c]);
        o.Save(Path.Combine(outDir, "quant_finetune.safetensors"));
        Console.WriteLine($"wrote {outDir}/quant_inputs.safetensors and quant_finetune.safetensors");
    }
}
