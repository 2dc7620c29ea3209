using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Models.Generation;

namespace FineTune.Models.Tests;

/// <summary>
/// Engine steps run llama-style layers through IBackend's fused decode operations (CausalLM.DecodeLayer): the same
/// logits bit for bit as the step's plain operations, and only where a layer is what DecodeLayer computes.
/// </summary>
public sealed class FusedDecodeLayerTests
{
    /// <summary>Counts the fused operations and keeps every logits row the engine picks from (ArgMax / SampleRows inputs).</summary>
    private sealed class Probe(IBackend inner) : ForwardingBackend(inner)
    {
        public int Layers, QkvSets, Ropes, Tails;
        public readonly List<float[]> Logits = [];

        // The whole layer, composed through this probe (as every backend but CUDA's persistent launch runs it), so its three operations count too.
        public override void DecodeLayer(DecodeLayerTensors t) { Layers++; DecodeComposition.DecodeLayer(this, t); }

        public override void NormMatMulShared(IReadOnlyList<Tensor> cs, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, IReadOnlyList<Tensor> bs)
        { QkvSets++; base.NormMatMulShared(cs, ln, rstd, x, normWeight, eps, bs); }
        public override void QkRopeCacheAttention(Tensor output, Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd,
            Tensor? kRstd, float eps, Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows, Tensor sequences,
            Tensor blockTables, CachedAttentionShape shape)
        {
            Ropes++;
            base.QkRopeCacheAttention(output, q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache, cacheRows,
                sequences, blockTables, shape);
        }
        public override void AttentionOutputMlp(Tensor y, Tensor mid, Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor att, Tensor oWeight,
            Tensor x, Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight, Tensor downWeight)
        { Tails++; base.AttentionOutputMlp(y, mid, h, gate, up, ln, rstd, att, oWeight, x, normWeight, eps, gateWeight, upWeight, downWeight); }

        public override void ArgMax(Tensor x, Tensor output) { Keep(x); base.ArgMax(x, output); }
        public override void SampleRows(Tensor logits, Tensor parameters, Tensor seen, Tensor output, Tensor scratch) { Keep(logits); base.SampleRows(logits, parameters, seen, output, scratch); }

        private void Keep(Tensor x)
        {
            var v = new float[x.Length];
            Inner.Download(x, v);
            Logits.Add(v);
        }
    }

    private static readonly int[][] Prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]];

    private static (int[][] Tokens, Probe Probe) Generate(TransformerSpec spec, bool fused, GenerationOptions options, Action<CausalLM>? prepare = null)
    {
        var probe = new Probe(new CpuBackend(2));
        using var model = CausalLM.Create(spec, probe, TrainingSetup.Inference, new RandomWeights(4, 0.5f));
        prepare?.Invoke(model);
        model.FusedDecodeLayers = fused;
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxSequences = 2, MaxModelLength = 24, MaxBatchTokens = 16 });
        var tokens = new int[Prompts.Length][];
        for (int i = 0; i < Prompts.Length; i++)
        {
            int row = i;
            engine.Add(new GenerationRequest(Prompts[i], options with { MaxNewTokens = 6 + i, Seed = 3 + i }) { OnFinished = s => tokens[row] = s.Tokens });
        }
        engine.RunToCompletion();
        return (tokens, probe);
    }

    [Theory]
    [InlineData("qwen3", false)] // q_norm / k_norm
    [InlineData("llama", false)]
    [InlineData("llama", true)]
    [InlineData("mistral", true)]
    public void Fused_layers_give_the_plain_steps_logits_bit_for_bit(string architecture, bool sample)
    {
        var spec = TinyModels.Spec(architecture, tied: false);
        var options = sample ? new GenerationOptions { DoSample = true, Temperature = 0.9, TopK = 10 } : new GenerationOptions();
        var plain = Generate(spec, fused: false, options);
        var fused = Generate(spec, fused: true, options);
        Assert.Equal(0, plain.Probe.QkvSets);
        // Five prompts' worth of steps (prefill chunks, decode steps and continuous batching refills), every layer fused.
        Assert.True(fused.Probe.QkvSets > 10 * spec.NumLayers, $"{fused.Probe.QkvSets} fused q/k/v sets");
        Assert.Equal(0, fused.Probe.QkvSets % spec.NumLayers);
        Assert.Equal(fused.Probe.QkvSets, fused.Probe.Ropes);
        Assert.Equal(fused.Probe.QkvSets, fused.Probe.Tails);
        Assert.Equal(fused.Probe.QkvSets, fused.Probe.Layers);
        Assert.Equal(0, plain.Probe.Layers);
        Assert.Equal(plain.Probe.Logits.Count, fused.Probe.Logits.Count);
        for (int s = 0; s < plain.Probe.Logits.Count; s++)
            Assert.Equal(plain.Probe.Logits[s], fused.Probe.Logits[s]);
        for (int i = 0; i < Prompts.Length; i++) Assert.Equal(plain.Tokens[i], fused.Tokens[i]);
        Assert.True(plain.Tokens.All(t => t.Length > 0));
    }

    [Theory]
    [InlineData("qwen2")]   // q/k/v biases
    [InlineData("gemma2")]  // sandwich norms, (1 + w), GeGLU
    public void Layers_the_fused_operations_do_not_describe_keep_the_plain_step(string architecture)
    {
        var spec = TinyModels.Spec(architecture, tied: true);
        var (_, probe) = Generate(spec, fused: true, new GenerationOptions());
        Assert.Equal(0, probe.QkvSets + probe.Ropes + probe.Tails);
        Assert.NotEmpty(probe.Logits);
    }

    [Fact]
    public void A_model_with_its_own_lora_adapter_keeps_the_plain_step()
    {
        var spec = TinyModels.Spec("qwen3", tied: false);
        var setup = new TrainingSetup { LoraRank = 2, LoraTarget = ["q_proj", "down_proj"] };
        var probe = new Probe(new CpuBackend(2));
        using var model = CausalLM.Create(spec, probe, setup, new RandomWeights(4, 0.5f));
        model.Generate([[1, 2, 3]], new GenerationOptions { MaxNewTokens = 3 });
        Assert.Equal(0, probe.QkvSets + probe.Ropes + probe.Tails);
    }

    [Fact]
    public void Q_and_k_norms_come_together_or_not_at_all()
    {
        var cpu = new CpuBackend(1);
        var b = new TensorArena.Builder();
        int iq = b.Add("q", DType.F32, 1, 8), ik = b.Add("k", DType.F32, 1, 8), iv = b.Add("v", DType.F32, 1, 8), inw = b.Add("qn", DType.F32, 4);
        int ir = b.Add("r", DType.F32, 2), ip = b.Add("pos", DType.I32, 1), ic = b.Add("cos", DType.F32, 4, 2), isn = b.Add("sin", DType.F32, 4, 2);
        int ikc = b.Add("kc", DType.F32, 4, 8), ivc = b.Add("vc", DType.F32, 4, 8), irow = b.Add("rows", DType.I32, 1);
        using var arena = b.Build(cpu);
        var e = Assert.Throws<ArgumentException>(() => DecodeComposition.QkRopeCache(cpu, arena[iq], arena[ik], arena[iq], arena[ik], arena[iv],
            arena[inw], null, arena[ir], arena[ir], 1e-6f, arena[ip], arena[ic], arena[isn], 4, arena[ikc], arena[ivc], arena[irow]));
        Assert.Contains("q_norm and k_norm", e.Message);
        var inPlace = Assert.Throws<ArgumentException>(() => DecodeComposition.QkRopeCache(cpu, arena[iq], arena[ik], arena[iv], arena[ik], arena[iv],
            null, null, null, null, 1e-6f, arena[ip], arena[ic], arena[isn], 4, arena[ikc], arena[ivc], arena[irow]));
        Assert.Contains("in place", inPlace.Message);
    }
}
