using FineTune.Engine.Cpu;
using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

/// <summary>
/// The cuDNN attention graphs without cuDNN: their tensor layouts address FineTune's buffers, they are well formed,
/// and, evaluated on the CPU (<see cref="CudnnGraphInterpreter"/>), they compute what the CPU backend's attention
/// and its backward compute. Whether cuDNN accepts them is the device checks' `cudnn` command's question.
/// </summary>
public sealed class CudnnSdpaGraphTests
{
    const long Version = 90100;

    [Fact]
    public void Row_major_heads_view_addresses_each_element_of_the_token_major_buffer()
    {
        int b = 2, s = 3, h = 4, d = 5;
        var (dims, strides) = CudnnSdpaGraphs.RowMajorHeads(b, s, h, d);
        Assert.Equal([2L, 4, 3, 5], dims);
        Assert.Equal([60L, 5, 20, 1], strides);
        for (int bi = 0; bi < b; bi++)
            for (int hi = 0; hi < h; hi++)
                for (int si = 0; si < s; si++)
                    for (int di = 0; di < d; di++)
                        // FineTune's [B·S, H·D]: row b·S + s, column h·D + d.
                        Assert.Equal((long)(bi * s + si) * h * d + hi * d + di, bi * strides[0] + hi * strides[1] + si * strides[2] + di * strides[3]);
    }

    [Fact]
    public void Transposed_view_swaps_the_last_two_dimensions_and_their_strides()
    {
        var (dims, strides) = CudnnSdpaGraphs.Transposed(CudnnSdpaGraphs.RowMajorHeads(1, 7, 2, 8));
        Assert.Equal([1L, 2, 8, 7], dims);
        Assert.Equal([112L, 8, 1, 16], strides);
    }

    [Fact]
    public void Stats_are_lse_b_h_s_with_a_unit_last_dimension()
    {
        var (dims, strides) = CudnnSdpaGraphs.StatsLayout(2, 300, 4);
        Assert.Equal([2L, 4, 300, 1], dims);
        Assert.Equal([1200L, 300, 1, 1], strides);
    }

    [Fact]
    public void Forward_graph_is_the_sdpa_pattern_in_order()
    {
        var g = CudnnSdpaGraphs.Forward(new SdpaShape(1, 300, 4, 2, 128, 0.088f), Version);
        Assert.Empty(g.Problems());
        Assert.Equal(["bmm1 Q·Kt", "attn_scale", "gen_row_index", "gen_col_index", "row>=col", "causal select", "softmax max",
            "softmax sub", "softmax exp", "softmax sum", "softmax log", "softmax stats", "softmax div", "bmm2 P·V"], g.Operations.Select(o => o.Name));
        Assert.Equal(["Q", "K", "V", "O", "Stats"], g.Bound.Select(t => t.Name));
        var bmm1 = (CudnnMatmul)g.Operations[0];
        Assert.Equal([1L, 2, 128, 300], bmm1.B.Dims);        // Kᵀ over the 2 KV heads
        Assert.Equal([1L, 4, 300, 300], bmm1.C.Dims);        // scores over the 4 query heads
        var bmm2 = (CudnnMatmul)g.Operations[^1];
        Assert.Equal(CudnnDataType.BFLOAT16, bmm2.A.Type);   // P in the inputs' type
        Assert.Equal(CudnnDataType.FLOAT, g["Stats"].Type);
        Assert.Equal(0.088f, g["attn_scale"].Value);
    }

    [Fact]
    public void Describe_lists_each_operation_with_its_mode_and_tensors()
    {
        var lines = CudnnSdpaGraphs.Forward(new SdpaShape(1, 300, 4, 2, 128, 0.088f), Version).Describe().Split('\n');
        Assert.Equal(14, lines.Length);
        Assert.StartsWith("gen_row_index (Pointwise GEN_INDEX compute FLOAT axis 2): S_scaled#", lines[2]);
        Assert.EndsWith("-> row#10 INT32 [1,4,300,300] strides [360000,90000,300,1] virtual", lines[2]);
        Assert.StartsWith("softmax max (Reduce MAX): ", lines[6]);
    }

    [Fact]
    public void Mask_value_is_minus_infinity_from_cudnn_9_1_and_the_lowest_float_before()
    {
        Assert.Equal(float.NegativeInfinity, CudnnSdpaGraphs.MaskValue(90100));
        Assert.Equal(float.MinValue, CudnnSdpaGraphs.MaskValue(90000));
        Assert.Equal(float.MinValue, CudnnSdpaGraphs.MaskValue(90600, lowest: true));
        Assert.Equal(float.MinValue, CudnnSdpaGraphs.Forward(new SdpaShape(1, 8, 2, 2, 8, 0.3f), 90600, new SdpaGraphOptions(LowestMask: true))["mask_value"].Value);
    }

    [Fact]
    public void Backward_graph_sums_gqa_key_and_value_gradients_over_each_group()
    {
        var g = CudnnSdpaGraphs.Backward(new SdpaShape(1, 64, 4, 2, 32, 0.2f), Version);
        Assert.Empty(g.Problems());
        Assert.Equal(["Q", "K", "V", "O", "dO", "Stats", "dQ", "dK", "dV", "SoftmaxSum", "dQAccum"], g.Bound.Select(t => t.Name));
        var dkWriter = g.Operations.Single(o => o.Output.Name == "dK");
        var dvWriter = g.Operations.Single(o => o.Output.Name == "dV");
        Assert.IsType<CudnnReduce>(dkWriter);
        Assert.IsType<CudnnReduce>(dvWriter);
        Assert.Equal([1L, 4, 64, 32], ((CudnnReduce)dkWriter).X.Dims);
    }

    [Fact]
    public void Backward_graph_without_gqa_writes_key_and_value_gradients_from_the_matmuls()
    {
        var g = CudnnSdpaGraphs.Backward(new SdpaShape(1, 64, 4, 4, 32, 0.2f), Version);
        Assert.Empty(g.Problems());
        Assert.IsType<CudnnMatmul>(g.Operations.Single(o => o.Output.Name == "dK"));
        Assert.IsType<CudnnMatmul>(g.Operations.Single(o => o.Output.Name == "dV"));
    }

    [Fact]
    public void Problems_name_a_read_before_write_and_an_unread_virtual_tensor()
    {
        var g = new CudnnGraph();
        var x = g.Memory("x", [1, 1, 2, 2], [4, 4, 2, 1], CudnnDataType.FLOAT);
        var early = g.Virtual("early", [1, 1, 2, 2], [4, 4, 2, 1]);
        g.Pointwise("uses early", CudnnPointwiseMode.ADD, x, early, g.VirtualLike("unread", x));
        g.Pointwise("writes early", CudnnPointwiseMode.EXP, x, null, early);
        var problems = g.Problems();
        Assert.Contains("uses early reads early before any operation writes it", problems);
        Assert.Contains("virtual unread is never read", problems);
    }

    [Theory]
    [InlineData(1, 9, 2, 1, 8)]
    [InlineData(2, 7, 4, 2, 4)]
    [InlineData(1, 6, 2, 2, 4)]
    public void Forward_graph_computes_the_cpu_backends_causal_attention(int b, int t, int hq, int hk, int d)
    {
        var (shape, mem, cpu, o, lse, _, _, _) = Reference(b, t, hq, hk, d);
        CudnnGraphInterpreter.Run(CudnnSdpaGraphs.Forward(shape, Version), mem);
        AssertClose(cpu.Read(o), mem[CudnnSdpaGraphs.O]);
        AssertClose(cpu.Read(lse), mem[CudnnSdpaGraphs.Stats]);
    }

    [Theory]
    [InlineData(1, 9, 2, 1, 8)]
    [InlineData(2, 7, 4, 2, 4)]
    [InlineData(1, 6, 2, 2, 4)]
    public void Backward_graph_computes_the_cpu_backends_attention_gradients(int b, int t, int hq, int hk, int d)
    {
        var (shape, mem, cpu, o, lse, dq, dk, dv) = Reference(b, t, hq, hk, d);
        mem[CudnnSdpaGraphs.O] = cpu.Read(o);
        mem[CudnnSdpaGraphs.Stats] = cpu.Read(lse);
        CudnnGraphInterpreter.Run(CudnnSdpaGraphs.Backward(shape, Version), mem);
        AssertClose(cpu.Read(dq), mem[CudnnSdpaGraphs.dQ]);
        AssertClose(cpu.Read(dk), mem[CudnnSdpaGraphs.dK]);
        AssertClose(cpu.Read(dv), mem[CudnnSdpaGraphs.dV]);
    }

    [Fact]
    public void Every_graph_variant_computes_the_same_attention_and_gradients()
    {
        foreach (var options in SdpaGraphOptions.Alternatives)
        {
            var (shape, mem, cpu, o, lse, dq, _, _) = Reference(1, 5, 2, 1, 4);
            var forward = CudnnSdpaGraphs.Forward(shape, Version, options);
            Assert.Equal(options.ScalarRank, forward["attn_scale"].Dims.Length);
            CudnnGraphInterpreter.Run(forward, mem);
            AssertClose(cpu.Read(o), mem[CudnnSdpaGraphs.O]);
            CudnnGraphInterpreter.Run(CudnnSdpaGraphs.Backward(shape, Version, options), mem);
            AssertClose(cpu.Read(dq), mem[CudnnSdpaGraphs.dQ]);
        }
    }

    [Fact]
    public void Default_variant_has_4d_scalars_and_f32_index_compute()
    {
        var g = CudnnSdpaGraphs.Forward(new SdpaShape(1, 8, 2, 2, 8, 0.3f), Version);
        Assert.Equal([1L, 1, 1, 1], g["attn_scale"].Dims);
        var genIndex = g.Operations.OfType<CudnnPointwise>().Where(p => p.Mode == CudnnPointwiseMode.GEN_INDEX).ToList();
        Assert.Equal(2, genIndex.Count);
        Assert.All(genIndex, p => Assert.Equal(CudnnDataType.FLOAT, p.Compute));
        var int32 = CudnnSdpaGraphs.Forward(new SdpaShape(1, 8, 2, 2, 8, 0.3f), Version, new SdpaGraphOptions(IndexCompute: CudnnDataType.INT32));
        Assert.All(int32.Operations.OfType<CudnnPointwise>().Where(p => p.Mode == CudnnPointwiseMode.GEN_INDEX), p => Assert.Equal(CudnnDataType.INT32, p.Compute));
        Assert.Equal([1L], CudnnSdpaGraphs.Forward(new SdpaShape(1, 8, 2, 2, 8, 0.3f), Version, new SdpaGraphOptions(ScalarRank: 1))["attn_scale"].Dims);
    }

    [Theory]
    [InlineData(1, 9, 2, 1, 8)]
    [InlineData(2, 7, 4, 2, 4)]
    public void Deterministic_dq_backward_writes_dq_from_the_matmul_and_computes_the_same_gradients(int b, int t, int hq, int hk, int d)
    {
        var (shape, mem, cpu, o, lse, dq, dk, dv) = Reference(b, t, hq, hk, d);
        mem[CudnnSdpaGraphs.O] = cpu.Read(o);
        mem[CudnnSdpaGraphs.Stats] = cpu.Read(lse);
        var g = CudnnSdpaGraphs.Backward(shape, Version, new SdpaGraphOptions(DeterministicDq: true));
        Assert.DoesNotContain(g.Tensors, x => x.Name == CudnnSdpaGraphs.DqAccum);
        var dqMatmul = g.Operations.OfType<CudnnMatmul>().Single(m => m.C.Name == CudnnSdpaGraphs.dQ);
        Assert.Equal(CudnnDataType.BFLOAT16, dqMatmul.C.Type);
        CudnnGraphInterpreter.Run(g, mem);
        AssertClose(cpu.Read(dq), mem[CudnnSdpaGraphs.dQ]);
        AssertClose(cpu.Read(dk), mem[CudnnSdpaGraphs.dK]);
        AssertClose(cpu.Read(dv), mem[CudnnSdpaGraphs.dV]);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 1)]
    [InlineData(1, 2)]
    public void Slices_of_sequences_and_kv_heads_compute_the_whole_problems_gradients(int sliceBatch, int sliceKv)
    {
        // What CudnnAttention.BackwardDeterministic does on the GPU: one graph per slice, on the whole buffers at the
        // slice's offsets (here: each buffer's tail from that offset, written back after the slice ran).
        const int b = 2, t = 5, hq = 4, hk = 2, d = 4;
        var (whole, mem, cpu, o, lse, dq, dk, dv) = Reference(b, t, hq, hk, d);
        var full = new Dictionary<string, float[]>(mem)
        {
            [CudnnSdpaGraphs.O] = cpu.Read(o), [CudnnSdpaGraphs.Stats] = cpu.Read(lse),
            [CudnnSdpaGraphs.dQ] = new float[b * t * hq * d], [CudnnSdpaGraphs.dK] = new float[b * t * hk * d], [CudnnSdpaGraphs.dV] = new float[b * t * hk * d],
        };
        var slice = whole.Slice(sliceBatch, sliceKv);
        Assert.Equal((sliceKv * 2, hq, hk), (slice.QueryHeads, slice.QueryRowHeads, slice.KvRowHeads));
        var graph = CudnnSdpaGraphs.Backward(slice, Version, new SdpaGraphOptions(DeterministicDq: true));
        string[] queryShaped = [CudnnSdpaGraphs.Q, CudnnSdpaGraphs.O, CudnnSdpaGraphs.dO, CudnnSdpaGraphs.dQ];
        string[] kvShaped = [CudnnSdpaGraphs.K, CudnnSdpaGraphs.V, CudnnSdpaGraphs.dK, CudnnSdpaGraphs.dV];
        for (int b0 = 0; b0 < b; b0 += sliceBatch)
            for (int kv0 = 0; kv0 < hk; kv0 += sliceKv)
            {
                var (qo, kvo, lo) = whole.Offsets(b0, kv0);
                long OffsetOf(string name) => queryShaped.Contains(name) ? qo : kvShaped.Contains(name) ? kvo : lo;
                var views = full.ToDictionary(kv => kv.Key, kv => kv.Value[(int)OffsetOf(kv.Key)..]);
                CudnnGraphInterpreter.Run(graph, views);
                foreach (var name in new[] { CudnnSdpaGraphs.dQ, CudnnSdpaGraphs.dK, CudnnSdpaGraphs.dV })
                    views[name].CopyTo(full[name], (int)OffsetOf(name));
            }
        AssertClose(cpu.Read(dq), full[CudnnSdpaGraphs.dQ]);
        AssertClose(cpu.Read(dk), full[CudnnSdpaGraphs.dK]);
        AssertClose(cpu.Read(dv), full[CudnnSdpaGraphs.dV]);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Query_head_slices_with_summed_kv_partials_compute_the_whole_problems_gradients(int headsPerSlice)
    {
        // What BackwardDeterministic does for very long sequences: per sequence, key/value head and group of query
        // heads one graph, whose dK/dV land packed in partial buffers, summed afterwards (sum_head_partials).
        const int b = 2, t = 6, hq = 4, hk = 1, d = 4;
        var (whole, mem, cpu, o, lse, dq, dk, dv) = Reference(b, t, hq, hk, d);
        var full = new Dictionary<string, float[]>(mem)
        {
            [CudnnSdpaGraphs.O] = cpu.Read(o), [CudnnSdpaGraphs.Stats] = cpu.Read(lse), [CudnnSdpaGraphs.dQ] = new float[b * t * hq * d],
        };
        float[] dkAll = new float[b * t * hk * d], dvAll = new float[b * t * hk * d];
        var slice = whole.HeadSlice(headsPerSlice);
        Assert.True(slice.PartialKv);
        var graph = CudnnSdpaGraphs.Backward(slice, Version, new SdpaGraphOptions(DeterministicDq: true));
        Assert.Equal([(long)d, 1], graph[CudnnSdpaGraphs.dK].Strides[2..]);
        int group = hq / hk;
        for (int b0 = 0; b0 < b; b0++)
            for (int kv0 = 0; kv0 < hk; kv0++)
                for (int h = kv0 * group; h < (kv0 + 1) * group; h += headsPerSlice)
                {
                    var (qo, kvo, lo) = whole.HeadOffsets(b0, h);
                    var views = new Dictionary<string, float[]>
                    {
                        [CudnnSdpaGraphs.Q] = full[CudnnSdpaGraphs.Q][(int)qo..], [CudnnSdpaGraphs.O] = full[CudnnSdpaGraphs.O][(int)qo..],
                        [CudnnSdpaGraphs.dO] = full[CudnnSdpaGraphs.dO][(int)qo..], [CudnnSdpaGraphs.dQ] = full[CudnnSdpaGraphs.dQ][(int)qo..],
                        [CudnnSdpaGraphs.K] = full[CudnnSdpaGraphs.K][(int)kvo..], [CudnnSdpaGraphs.V] = full[CudnnSdpaGraphs.V][(int)kvo..],
                        [CudnnSdpaGraphs.Stats] = full[CudnnSdpaGraphs.Stats][(int)lo..],
                    };
                    CudnnGraphInterpreter.Run(graph, views);
                    views[CudnnSdpaGraphs.dQ].CopyTo(full[CudnnSdpaGraphs.dQ], (int)qo);
                    // The partials, packed [S, D], added into the key/value head's columns.
                    for (int r = 0; r < t; r++)
                        for (int c = 0; c < d; c++)
                        {
                            long at = kvo + (long)r * hk * d + c;
                            dkAll[at] += views[CudnnSdpaGraphs.dK][r * d + c];
                            dvAll[at] += views[CudnnSdpaGraphs.dV][r * d + c];
                        }
                }
        AssertClose(cpu.Read(dq), full[CudnnSdpaGraphs.dQ]);
        AssertClose(cpu.Read(dk), dkAll);
        AssertClose(cpu.Read(dv), dvAll);
    }

    [Fact]
    public void A_slice_addresses_its_heads_in_the_whole_problems_rows()
    {
        var whole = new SdpaShape(3, 10, 8, 2, 16, 0.25f);
        var slice = whole.Slice(1, 1);
        Assert.Equal((1, 4, 1), (slice.Batch, slice.QueryHeads, slice.KvHeads));
        // Sequence 2, kv head 1: its query heads start at head 4.
        Assert.Equal((2L * 10 * 8 * 16 + 4 * 16, 2L * 10 * 2 * 16 + 16, 2L * 8 * 10 + 4 * 10), whole.Offsets(2, 1));
        var (dims, strides) = CudnnSdpaGraphs.RowMajorHeads(slice.Batch, slice.Seq, slice.QueryHeads, slice.HeadDim, slice.QueryRowHeads);
        Assert.Equal([1L, 4, 10, 16], dims);
        Assert.Equal([10L * 8 * 16, 16, 8 * 16, 1], strides);
        Assert.Equal([8L * 10, 10, 1, 1], CudnnSdpaGraphs.StatsLayout(1, 10, 4, slice.QueryRowHeads).Strides);
        Assert.Equal(whole, whole.Slice(3, 2));
    }

    // Random Q, K, V, dO; the CPU backend's forward and backward; the graph's memory holding the inputs.
    static (SdpaShape, Dictionary<string, float[]>, CpuBackend, Tensor O, Tensor Lse, Tensor Dq, Tensor Dk, Tensor Dv) Reference(int b, int t, int hq, int hk, int d)
    {
        var cpu = new CpuBackend();
        var s = AttentionShape.Training(b, t, hq, hk, d);
        int rows = b * t;
        float[] q = TestTensors.Random(rows * hq * d, 1), k = TestTensors.Random(rows * hk * d, 2), v = TestTensors.Random(rows * hk * d, 3);
        float[] dy = TestTensors.Random(rows * hq * d, 4);
        Tensor tq = cpu.F32(q, rows, hq * d), tk = cpu.F32(k, rows, hk * d), tv = cpu.F32(v, rows, hk * d), seg = cpu.I32(new int[rows], rows);
        Tensor o = cpu.Allocate(DType.F32, rows, hq * d), lse = cpu.Allocate(DType.F32, b, hq, t);
        cpu.Attention(o, lse, tq, tk, tv, seg, s);
        Tensor dq = cpu.Allocate(DType.F32, rows, hq * d), dk = cpu.Allocate(DType.F32, rows, hk * d), dv = cpu.Allocate(DType.F32, rows, hk * d);
        cpu.AttentionBackward(dq, dk, dv, cpu.F32(dy, rows, hq * d), o, lse, tq, tk, tv, seg, s);
        var mem = new Dictionary<string, float[]>
        {
            [CudnnSdpaGraphs.Q] = q, [CudnnSdpaGraphs.K] = k, [CudnnSdpaGraphs.V] = v, [CudnnSdpaGraphs.dO] = dy,
        };
        return (new SdpaShape(b, t, hq, hk, d, s.Scale), mem, cpu, o, lse, dq, dk, dv);
    }

    static void AssertClose(float[] expected, float[] actual)
    {
        Assert.True(actual.Length >= expected.Length, $"graph output has {actual.Length} elements, expected {expected.Length}");
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++) { double e = actual[i] - expected[i]; num += e * e; den += (double)expected[i] * expected[i]; }
        double rel = Math.Sqrt(num / Math.Max(den, 1e-30));
        Assert.True(rel < 1e-5, $"relative L2 {rel:G3}");
    }
}
