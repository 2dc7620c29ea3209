using System.Runtime.InteropServices;
using FineTune.Engine;
using FineTune.Models.Quantization;

namespace FineTune.Models;

// QLoRA: frozen decoder linears held as bitsandbytes 4-bit or LLM.int8 on the backend. Each product that reads such a
// weight (forward, recompute, input gradient) first dequantizes it into one scratch of the largest linear, in the
// compute dtype, then runs the ordinary matrix product; the full-precision copy of a weight exists for one linear at a
// time, never for the model. fp8: the same linears held as FP8 E4M3 codes (and their transpose) with a per-tensor scale;
// their products run on the FP8 tensor cores directly (IBackend.Fp8MatMul), with no dequantized copy.
public sealed partial class CausalLM
{
    private sealed class QuantizedSlot
    {
        public int Codes = -1, Absmax = -1, Absmax2 = -1, Transposed = -1;
        /// <summary>fp8_scaling: delayed: the linear's cast sites are 2·Site (forward input) and 2·Site + 1 (output gradient).</summary>
        public int Site = -1;
        /// <summary>How it is held, known when planned (<see cref="Weight"/> is built when the weights load).</summary>
        public QuantFormat Format;
        public QuantizedWeight Weight = null!;
    }

    // Delayed FP8 scaling (Fp8DelayedScale): the sites' arena, which sites have been advanced at least once since they
    // were first used (their scale comes from the history), which were used in the pass running now.
    private int _fp8Sites, _fp8StatesHandle = -1;
    private Tensor? _fp8States;
    private bool[] _fp8Ready = [], _fp8Used = [];
    private long _fp8Advances;

    /// <summary>fp8_scaling: delayed: how many passes have ended (history advances) so far.</summary>
    public long Fp8HistoryAdvances => _fp8Advances;

    /// <summary>The delayed-scaling site of a linear's cast (null under current scaling), marked used in this pass.</summary>
    private Fp8DelayedScale? Fp8Site(QuantizedSlot slot, bool outputGradient)
    {
        if (_fp8States is null || slot.Site < 0) return null;
        int i = 2 * slot.Site + (outputGradient ? 1 : 0), stride = Fp8DelayedScale.Stride(Setup.Fp8AmaxHistory);
        _fp8Used[i] = true;
        return new Fp8DelayedScale(_fp8States.View((long)i * stride, [stride], "fp8.site"), _fp8Ready[i]);
    }

    /// <summary>True when the model keeps FP8 delayed-scaling histories (fp8_scaling: delayed and at least one FP8 linear).</summary>
    public bool HasFp8Histories => _fp8States is not null;

    /// <summary>
    /// fp8_scaling: delayed under data parallelism: called as every pass starts, before its histories advance, with the
    /// sites' arena (<see cref="Fp8DelayedScale"/>'s layout, on the backend) and which sites the pass before used; it
    /// makes both the same on every rank (DataParallel: the arena's element-wise maximum and the flags' union over the
    /// ranks, Transformer Engine's amax reduction), so that every rank pushes the largest amax any rank cast at a site
    /// and all cast with the same scales. It is called at every pass start, whether the pass before cast anything or
    /// not, since a collective needs every rank; so every rank must run the same passes. Null: one process.
    /// </summary>
    public Action<Tensor, bool[]>? Fp8AmaxReduction { get; set; }

    /// <summary>
    /// Called as every pass starts (Prepare): when the pass before cast anything, one launch pushes each site's pass amax
    /// into its history, and the sites it used take their scales from the history from now on. A backward (and its
    /// recomputes) always continues the last pass, so it casts with that pass's scales.
    /// </summary>
    private void AdvanceFp8Histories()
    {
        if (_fp8States is null) return;
        Fp8AmaxReduction?.Invoke(_fp8States, _fp8Used);
        if (!_fp8Used.Contains(true)) return;
        Backend.Fp8AdvanceHistories(_fp8States, 2 * _fp8Sites, Setup.Fp8AmaxHistory);
        _fp8Advances++;
        for (int i = 0; i < _fp8Used.Length; i++)
        {
            _fp8Ready[i] |= _fp8Used[i];
            _fp8Used[i] = false;
        }
    }

    /// <summary>
    /// fp8_scaling: delayed: SwiGLU casts its outputs for the MLP's FP8 products itself (<see cref="IBackend.SwiGluFp8"/>,
    /// <see cref="IBackend.SwiGluBackwardFp8"/>: the same bits, one pass over each [tokens, intermediate] tensor fewer), and
    /// the pre-norms cast ln1 and ln2 for q/k/v's and gate/up's shared products (<see cref="IBackend.RmsNormFp8"/>,
    /// <see cref="IBackend.ResidualRmsNormFp8"/>). False (tests; FINETUNE_FP8_FUSED_CASTS=0 for an A/B) casts each in its
    /// product as before.
    /// </summary>
    internal bool FusedFp8Casts { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_FP8_FUSED_CASTS") != "0";

    /// <summary>
    /// Whether the pre-norms' casts fuse too (with <see cref="FusedFp8Casts"/>): rmsnorm.cu's *_fp8_v8 kernels write ln1's and
    /// ln2's E4M3 codes beside the bf16 rows. The same bits as the separate cast (`FineTune.DeviceChecks fp8`, 240 rows on
    /// the H200, 2026-12-03); FINETUNE_FP8_FUSED_NORMS=0 casts separately (the A/B: 20,232 vs 20,226 tok/s, one job).
    /// </summary>
    internal bool FusedFp8NormCasts { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_FP8_FUSED_NORMS") != "0";

    /// <summary>fp8_scaling: delayed holds the fused casts' codes in a training activation arena (ModelActivations.ActCodes, DupCodes, NormCodes).</summary>
    private bool Fp8CodesInArena => Setup.Fp8 && Setup.Fp8Scaling == Fp8Scaling.Delayed && Spec.HasDenseLayers;

    /// <summary>
    /// The site of a linear's cast when the producer of its input may cast for it: fp8_scaling: delayed, the weight in FP8,
    /// the site advanced at least once (a first pass scales currently, which needs its amax before the cast) and
    /// <see cref="FusedFp8Casts"/>; marked used as <see cref="Fp8Site"/> marks it. Null: the product casts its input itself.
    /// </summary>
    private Fp8DelayedScale? FusedFp8Site(LoraLinear lin, bool outputGradient)
    {
        if (!FusedFp8Casts || _fp8States is null || !_quantized.TryGetValue(lin.Weight, out var slot) || slot.Site < 0) return null;
        return _fp8Ready[2 * slot.Site + (outputGradient ? 1 : 0)] ? Fp8Site(slot, outputGradient) : null;
    }

    /// <summary>
    /// The site of a set's one shared cast (<see cref="SharedFp8Products"/>: its first FP8 linear's forward input) when the
    /// producer of the set's input may cast for it, as <see cref="FusedFp8Site"/>. Null when fewer than two of the set's
    /// linears are held in FP8 (each product then casts for itself) or the site is not ready.
    /// </summary>
    private Fp8DelayedScale? SharedFp8Site(LoraLinear[] lins)
    {
        if (!FusedFp8NormCasts) return null;
        var fp8 = Array.FindAll(lins, IsFp8);
        return fp8.Length < 2 ? null : FusedFp8Site(fp8[0], outputGradient: false);
    }

    private bool IsFp8(LoraLinear lin) => _quantized.TryGetValue(lin.Weight, out var slot) && slot.Weight.Format == QuantFormat.Fp8E4M3;

    /// <summary>The F32 values of a linear's delayed-scaling site (<see cref="Fp8DelayedScale"/>'s layout), for tests; not a use.</summary>
    internal float[] ReadFp8Site(string weightName, bool outputGradient)
    {
        var slot = _quantized.Single(kv => kv.Key.Name == weightName).Value;
        if (_fp8States is null || slot.Site < 0) throw new InvalidOperationException("fp8_scaling is not delayed");
        int stride = Fp8DelayedScale.Stride(Setup.Fp8AmaxHistory);
        var host = new float[stride];
        Backend.Download(_fp8States.View((long)(2 * slot.Site + (outputGradient ? 1 : 0)) * stride, [stride]), host);
        return host;
    }

    /// <summary>The whole arena of delayed-scaling sites (site i at i·<see cref="Fp8DelayedScale.Stride"/>), for tests.</summary>
    internal float[] ReadFp8States()
    {
        if (_fp8States is null) throw new InvalidOperationException("fp8_scaling is not delayed");
        var host = new float[_fp8States.Length];
        Backend.Download(_fp8States, host);
        return host;
    }

    private readonly Dictionary<Parameter, QuantizedSlot> _quantized = [];
    private int _scratchHandle = -1, _dynamicCodeHandle = -1;
    private Tensor? _dequantScratch, _dynamicCode;

    /// <summary>How the frozen linears are held (null: compute dtype).</summary>
    public QuantizationSetup? Quantization => Setup.Quantization;

    /// <summary>Bytes of the quantized weights on the device (codes and statistics).</summary>
    public long QuantizedWeightBytes => _quantized.Values.Sum(s => s.Weight.DeviceBytes);

    private bool HeldQuantized(Parameter p, bool trainable) =>
        (Setup.Quantization is not null || HeldFp8(p)) && !trainable && p.Role == ParameterRole.Weight && QuantizationSetup.IsQuantizedLinear(p.Name);

    /// <summary>
    /// fp8 holds a frozen decoder linear in FP8 when both its dimensions are multiples of 16 (cuBLASLt's FP8 products need
    /// them; every released model's are); any other stays in the compute dtype.
    /// </summary>
    private bool HeldFp8(Parameter p) => Setup.Fp8 && p.Shape.Length == 2 && p.Shape[0] % 16 == 0 && p.Shape[1] % 16 == 0;

    /// <summary>Bytes of the frozen linears held in FP8 (codes of W and Wᵀ, scales); 0 without fp8.</summary>
    public long Fp8WeightBytes => _quantized.Values.Where(s => s.Weight.Format == QuantFormat.Fp8E4M3).Sum(s => s.Weight.DeviceBytes);

    /// <summary>How many frozen linears are held in FP8.</summary>
    public int Fp8Linears => _quantized.Values.Count(s => s.Weight.Format == QuantFormat.Fp8E4M3);

    /// <summary>Declares the codes and statistics of a quantized weight in the arena (instead of its value).</summary>
    private void PlanQuantized(TensorArena.Builder builder, Parameter p)
    {
        int rows = p.Shape[0], cols = p.Shape[1];
        long n = (long)rows * cols;
        var slot = new QuantizedSlot();
        if (Setup.Quantization is not { } q)
        {
            slot.Codes = builder.Add(p.Name + ".fp8", DType.I32, QuantizedWeight.WordsFor(n));
            slot.Transposed = builder.Add(p.Name + ".fp8_transposed", DType.I32, QuantizedWeight.WordsFor(n));
            slot.Absmax = builder.Add(p.Name + ".fp8_scale_inv", DType.F32, 1);
            slot.Format = QuantFormat.Fp8E4M3;
        }
        else if (q.Bits == 8)
        {
            slot.Codes = builder.Add(p.Name + ".CB", DType.I32, QuantizedWeight.WordsFor(n));
            slot.Absmax = builder.Add(p.Name + ".SCB", DType.F32, rows);
        }
        else
        {
            long blocks = (n + QuantizationSetup.BlockSize - 1) / QuantizationSetup.BlockSize;
            slot.Codes = builder.Add(p.Name + ".codes", DType.I32, QuantizedWeight.WordsFor((n + 1) / 2));
            if (q.DoubleQuantization)
            {
                slot.Absmax = builder.Add(p.Name + ".absmax", DType.I32, QuantizedWeight.WordsFor(blocks));
                slot.Absmax2 = builder.Add(p.Name + ".nested_absmax", DType.F32, checked((int)((blocks + 255) / 256)));
                if (_dynamicCodeHandle < 0) _dynamicCodeHandle = builder.Add("quantization.dynamic_map", DType.F32, 256);
            }
            else slot.Absmax = builder.Add(p.Name + ".absmax", DType.F32, checked((int)blocks));
        }
        _quantized[p] = slot;
    }

    /// <summary>
    /// After planning every weight: the dequantization scratch, sized for the largest quantized linear, and with
    /// fp8_scaling: delayed the cast sites' histories (two per FP8 linear: its forward input and its output gradient).
    /// </summary>
    private void PlanDequantScratch(TensorArena.Builder builder)
    {
        if (_quantized.Count == 0) return;
        long largest = _quantized.Keys.Max(p => p.Length);
        _scratchHandle = builder.Add("quantization.dequantized", Backend.ComputeDType, checked((int)largest));
        if (Setup.Fp8 && Setup.Fp8Scaling == Fp8Scaling.Delayed)
        {
            foreach (var slot in _quantized.Values.Where(s => s.Format == QuantFormat.Fp8E4M3))
                slot.Site = _fp8Sites++;
            _fp8StatesHandle = builder.Add("fp8.amax_histories", DType.F32, checked(2 * _fp8Sites * Fp8DelayedScale.Stride(Setup.Fp8AmaxHistory)));
            _fp8Ready = new bool[2 * _fp8Sites];
            _fp8Used = new bool[2 * _fp8Sites];
        }
    }

    private void BindQuantized()
    {
        if (_quantized.Count == 0) return;
        if (_fp8StatesHandle >= 0)
        {
            _fp8States = _weights[_fp8StatesHandle];
            Backend.Zero(_fp8States);
        }
        _dequantScratch = _weights[_scratchHandle];
        if (_dynamicCodeHandle >= 0)
        {
            _dynamicCode = _weights[_dynamicCodeHandle];
            Backend.Upload(_dynamicCode, BnbDynamicMap.Signed);
        }
    }

    /// <summary>Quantizes (or takes pre-quantized) weight p and uploads its codes; p's offset is known only now.</summary>
    private void LoadQuantized(Parameter p, QuantizedSlot slot, IWeightSource source, Span<float> host)
    {
        if (Setup.Quantization is not { } q)
        {
            source.Read(p.Name, p.Shape, host);
            UploadFp8(p, slot, host);
            return;
        }
        int rows = p.Shape[0], cols = p.Shape[1];
        if (q.Bits == 8)
        {
            var rowsQ = (source as IQuantizedWeightSource)?.TryReadInt8(p.Name, p.Shape) ?? QuantizeInt8(p, source, host);
            UploadInt8(slot, rowsQ, rows, cols);
            return;
        }
        var pre = (source as IQuantizedWeightSource)?.TryReadFourBit(p.Name, p.Shape);
        if (pre is null || pre.Format != q.FourBitType || pre.BlockSize != QuantizationSetup.BlockSize || (pre.Nested is not null) != q.DoubleQuantization
            || (pre.Nested is { } pn && (pn.BlockSize != 256 || !pn.Code.AsSpan().SequenceEqual(BnbDynamicMap.Signed))))
        {
            // Quantized at load (or re-quantized from a checkpoint stored in another 4-bit layout).
            source.Read(p.Name, p.Shape, host);
            pre = BnbFourBitTensor.Quantize(host, p.Shape, q.FourBitType, q.DoubleQuantization, QuantizationSetup.BlockSize);
        }
        UploadFourBit(p, slot, pre);
    }

    private static Int8Rows QuantizeInt8(Parameter p, IWeightSource source, Span<float> host)
    {
        source.Read(p.Name, p.Shape, host);
        return Int8Rows.Quantize(host, p.Shape[0], p.Shape[1]);
    }

    private void UploadInt8(QuantizedSlot slot, Int8Rows q, int rows, int cols)
    {
        var codes = _weights[slot.Codes];
        var scb = _weights[slot.Absmax];
        Backend.Upload(codes, Words(MemoryMarshal.AsBytes(q.CB.AsSpan())));
        Backend.Upload(scb, q.SCB);
        slot.Weight = new QuantizedWeight(QuantFormat.Int8, rows, cols, codes, scb);
    }

    private void UploadFourBit(Parameter p, QuantizedSlot slot, BnbFourBitTensor q)
    {
        var codes = _weights[slot.Codes];
        var absmax = _weights[slot.Absmax];
        Backend.Upload(codes, Words(q.Codes));
        NestedAbsmax? nested = null;
        if (q.Nested is { } n)
        {
            Backend.Upload(absmax, Words(n.Codes));
            var absmax2 = _weights[slot.Absmax2];
            Backend.Upload(absmax2, n.Absmax2);
            nested = new NestedAbsmax(absmax2, _dynamicCode!, n.Offset, n.BlockSize);
        }
        else Backend.Upload(absmax, q.Absmax!);
        slot.Weight = new QuantizedWeight(q.Format, p.Shape[0], p.Shape[1], codes, absmax, nested, q.BlockSize);
    }

    /// <summary>W as FP8 E4M3 with one scale (quantized from the source's f32 values: one rounding), W and Wᵀ uploaded.</summary>
    private void UploadFp8(Parameter p, QuantizedSlot slot, ReadOnlySpan<float> values)
    {
        int rows = p.Shape[0], cols = p.Shape[1];
        var (codes, transposed, inverse) = Fp8.QuantizeWeight(values, rows, cols);
        var c = _weights[slot.Codes];
        var t = _weights[slot.Transposed];
        var s = _weights[slot.Absmax];
        Backend.Upload(c, Words(codes));
        Backend.Upload(t, Words(transposed));
        Backend.Upload(s, [inverse]);
        slot.Weight = new QuantizedWeight(QuantFormat.Fp8E4M3, rows, cols, c, s, Transposed: t);
    }

    /// <summary>Bytes as the little-endian I32 words that hold them (zero-padded to a whole word).</summary>
    private static int[] Words(ReadOnlySpan<byte> bytes)
    {
        var words = new int[QuantizedWeight.WordsFor(bytes.Length)];
        bytes.CopyTo(MemoryMarshal.AsBytes(words.AsSpan()));
        return words;
    }

    /// <summary>
    /// y = x·Wᵀ (+ y when accumulate) for a linear's frozen or trainable weight, on the FP8 tensor cores when held in FP8
    /// (from <paramref name="xCodes"/> when x's producer cast it already: <see cref="FusedFp8Site"/>).
    /// </summary>
    private void FrozenProduct(Tensor y, Tensor x, LoraLinear lin, bool accumulate = false, Fp8Operand? xCodes = null)
    {
        if (_quantized.TryGetValue(lin.Weight, out var slot) && slot.Weight.Format == QuantFormat.Fp8E4M3)
        {
            if (xCodes is { } codes) Backend.Fp8MatMulCodes(y, codes, slot.Weight, inputGradient: false, accumulate);
            else Backend.Fp8MatMul(y, x, slot.Weight, inputGradient: false, accumulate, Fp8Site(slot, outputGradient: false));
        }
        else if (xCodes is not null) throw new InvalidOperationException($"pre-cast FP8 input for {lin.Weight.Name}, which is not held in FP8");
        else Backend.MatMul(y, x, false, WeightValue(lin), true, 1f, accumulate);
    }

    /// <summary>
    /// fp8: the base products of a set's linears (all read x) that are held in FP8, with x cast to E4M3 once for all of
    /// them: ys[j] (+)= x·W_jᵀ, accumulating where <paramref name="accumulate"/>(j). Returns which j it computed; null when
    /// fewer than two are in FP8 (then each linear's own product casts x, as <see cref="FrozenProduct"/> does).
    /// <paramref name="xCodes"/>: x cast by its producer with <see cref="SharedFp8Site"/>'s site, read by the products
    /// that cast with that site instead of casting x again.
    /// </summary>
    private bool[]? SharedFp8Products(LoraLinear[] lins, Tensor[] ys, Tensor x, Func<int, bool> accumulate, Fp8Operand? xCodes = null)
    {
        var fp8 = new List<int>();
        for (int j = 0; j < lins.Length; j++)
            if (IsFp8(lins[j])) fp8.Add(j);
        if (fp8.Count < 2)
            return xCodes is null ? null : throw new InvalidOperationException($"pre-cast FP8 input for a set of {lins.Length} linears, {fp8.Count} of them in FP8");
        var done = new bool[lins.Length];
        foreach (bool acc in new[] { false, true })
        {
            int[] part = [.. fp8.Where(j => accumulate(j) == acc)];
            if (part.Length == 0) continue;
            var weights = part.Select(j => _quantized[lins[j].Weight].Weight).ToArray();
            // The set's one cast of x is the site of its first linear's forward input (a set split by accumulation casts
            // once per part, each with its first linear's site: the part holding the set's first FP8 linear may read xCodes).
            if (xCodes is { } codes && part[0] == fp8[0]) Backend.Fp8MatMulSharedCodes([.. part.Select(j => ys[j])], codes, weights, acc);
            else Backend.Fp8MatMulShared([.. part.Select(j => ys[j])], x, weights, acc, Fp8Site(_quantized[lins[part[0]].Weight], outputGradient: false));
            foreach (int j in part) done[j] = true;
        }
        return done;
    }

    /// <summary>
    /// dx = dy·W (+ dx when accumulate): the input gradient through a linear's weight, in FP8 when held so (from
    /// <paramref name="dyCodes"/> when dy's producer cast it already).
    /// </summary>
    private void FrozenInputGradient(Tensor dx, Tensor dy, LoraLinear lin, bool accumulate, Fp8Operand? dyCodes = null)
    {
        if (_quantized.TryGetValue(lin.Weight, out var slot) && slot.Weight.Format == QuantFormat.Fp8E4M3)
        {
            if (dyCodes is { } codes) Backend.Fp8MatMulCodes(dx, codes, slot.Weight, inputGradient: true, accumulate);
            else Backend.Fp8MatMul(dx, dy, slot.Weight, inputGradient: true, accumulate, Fp8Site(slot, outputGradient: true));
        }
        else if (dyCodes is not null) throw new InvalidOperationException($"pre-cast FP8 output gradient for {lin.Weight.Name}, which is not held in FP8");
        else Backend.MatMul(dx, dy, false, WeightValue(lin), false, 1f, accumulate);
    }

    /// <summary>The weight a product reads: its value, or (held quantized) its dequantization into the shared scratch.</summary>
    private Tensor WeightValue(LoraLinear lin)
    {
        if (!_quantized.TryGetValue(lin.Weight, out var slot)) return lin.Weight.Value;
        var scratch = _dequantScratch!.View(0, lin.Weight.Shape, lin.Weight.Name + ".dequantized");
        Backend.Dequantize(scratch, slot.Weight);
        return scratch;
    }

    private bool TryReadQuantized(Parameter p, float[] host)
    {
        if (!_quantized.TryGetValue(p, out var slot)) return false;
        var scratch = _dequantScratch!.View(0, p.Shape);
        Backend.Dequantize(scratch, slot.Weight);
        Backend.Download(scratch, host);
        return true;
    }

    private bool TryWriteQuantized(Parameter p, ReadOnlySpan<float> values)
    {
        if (!_quantized.TryGetValue(p, out var slot)) return false;
        if (Setup.Quantization is not { } q) UploadFp8(p, slot, values);
        else if (q.Bits == 8) UploadInt8(slot, Int8Rows.Quantize(values, p.Shape[0], p.Shape[1]), p.Shape[0], p.Shape[1]);
        else UploadFourBit(p, slot, BnbFourBitTensor.Quantize(values, p.Shape, q.FourBitType, q.DoubleQuantization, QuantizationSetup.BlockSize));
        return true;
    }
}
