using FineTune.Engine;
using FineTune.Engine.Cuda;

namespace FineTune.DeviceChecks;

// Unpacked causal attention through cuDNN (CudaBackend.AttentionKernels = Cudnn and CudnnFast) against the CPU
// reference: forward out and lse, dq/dk/dv after NaN poisoning, that cuDNN (not the flash fallback) ran each call,
// and the bits of repeated calls — required under Cudnn (the deterministic backward), reported under CudnnFast.
public static partial class OpChecks
{
    // Random q, k, v of one segment per row, and zeroed out and lse.
    static ((Tensor Cpu, Tensor Gpu) Q, (Tensor Cpu, Tensor Gpu) K, (Tensor Cpu, Tensor Gpu) V, (Tensor Cpu, Tensor Gpu) Seg, (Tensor Cpu, Tensor Gpu) O,
        (Tensor Cpu, Tensor Gpu) Lse) UnpackedInputs(Ctx c, int batch, int t, int hq, int hkv, int d) =>
        (c.Pair(c.Rand(batch * t * hq * d), [batch * t, hq * d]), c.Pair(c.Rand(batch * t * hkv * d), [batch * t, hkv * d]),
         c.Pair(c.Rand(batch * t * hkv * d), [batch * t, hkv * d]), c.IntPair(new int[batch * t], [batch, t]),
         c.Zeros([batch * t, hq * d]), c.Zeros([batch, hq, t], DType.F32));

    static void CudnnAttentionRows(Ctx c)
    {
        var shapes = new List<(int B, int T, int Hq, int Hkv, int D)> { (2, 77, 4, 2, 64), (1, 130, 2, 1, 128), (2, 300, 8, 2, 128), (1, 2048, 16, 8, 128) };
        var before = c.Gpu.AttentionKernels;
        foreach (var kernels in new[] { AttentionKernels.Cudnn, AttentionKernels.CudnnFast })
            foreach (var (batch, t, hq, hkv, d) in shapes)
            {
                c.Gpu.AttentionKernels = kernels;
                var s = AttentionShape.Training(batch, t, hq, hkv, d) with { Unpacked = true };
                string tag = $"{AttentionKernelsSetting.Name(kernels)} B{batch} T{t} H{hq}/{hkv} D{d}";
                var (q, k, v, segT, o, lse) = UnpackedInputs(c, batch, t, hq, hkv, d);
                var calls = c.Gpu.CudnnCalls;
                c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s); // builds the plan
                bool ranForward = c.Gpu.CudnnCalls.Forward == calls.Forward + 1;
                var firstO = c.Download(o.Gpu);
                double ms = c.TimeRepeat(() => c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
                c.Cpu.Attention(o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
                c.Check($"attention {tag}", "ran on cuDNN", ranForward, ms);
                c.Compare($"attention {tag}", "out", o, ms);
                c.Compare($"attention {tag}", "lse", lse, ms);
                c.Check($"attention {tag}", "bit-repeat", c.Download(o.Gpu).AsSpan().SequenceEqual(firstO), ms);

                var dout = c.Pair(c.Rand(batch * t * hq * d), [batch * t, hq * d]);
                var dq = c.Zeros([batch * t, hq * d]); var dk = c.Zeros([batch * t, hkv * d]); var dv = c.Zeros([batch * t, hkv * d]);
                c.Cpu.AttentionBackward(dq.Cpu, dk.Cpu, dv.Cpu, dout.Cpu, o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
                foreach (var g in new[] { dq.Gpu, dk.Gpu, dv.Gpu }) c.Gpu.Upload(g, Enumerable.Repeat(float.NaN, (int)g.Length).ToArray());
                calls = c.Gpu.CudnnCalls;
                c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
                bool ranBackward = c.Gpu.CudnnCalls.Backward == calls.Backward + 1;
                var first = new[] { dq.Gpu, dk.Gpu, dv.Gpu }.Select(g => c.Download(g)).ToArray();
                ms = c.TimeRepeat(() => c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
                c.Check($"attention_backward {tag}", "ran on cuDNN", ranBackward, ms);
                c.Compare($"attention_backward {tag}", "dq", dq, ms);
                c.Compare($"attention_backward {tag}", "dk", dk, ms);
                c.Compare($"attention_backward {tag}", "dv", dv, ms);
                bool same = new[] { dq.Gpu, dk.Gpu, dv.Gpu }.Select((g, i) => c.Download(g).AsSpan().SequenceEqual(first[i])).All(x => x);
                if (kernels == AttentionKernels.Cudnn) c.Check($"attention_backward {tag}", "bit-repeat", same, ms);
                else Console.WriteLine($"info attention_backward {tag}: the sixth run's dq/dk/dv bits {(same ? "equal" : "differ from")} the first's");
            }
        // The deterministic backward in slices (a workspace limit of about one sequence and key/value head): against the
        // CPU, the bits of a repeat, and (info) whether the slices give the whole call's bits.
        long limitBefore = c.Gpu.CudnnDeterministicWorkspaceLimit;
        c.Gpu.AttentionKernels = AttentionKernels.Cudnn;
        // Limits: about one sequence and key/value head (slices of sequences × heads); then about half a group's query
        // heads (slices of one sequence and 2 query heads, dK/dV partials summed by sum_head_partials).
        foreach (var (batch, t, hq, hkv, d, headSlice) in new[] { (2, 300, 8, 2, 128, false), (2, 1024, 16, 4, 64, false), (2, 2048, 8, 2, 128, true) })
        {
            var s = AttentionShape.Training(batch, t, hq, hkv, d) with { Unpacked = true };
            string tag = $"cudnn {(headSlice ? "head-sliced" : "sliced")} B{batch} T{t} H{hq}/{hkv} D{d}";
            var (q, k, v, segT, o, lse) = UnpackedInputs(c, batch, t, hq, hkv, d);
            c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
            c.Cpu.Attention(o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
            var dout = c.Pair(c.Rand(batch * t * hq * d), [batch * t, hq * d]);
            var dq = c.Zeros([batch * t, hq * d]); var dk = c.Zeros([batch * t, hkv * d]); var dv = c.Zeros([batch * t, hkv * d]);
            c.Cpu.AttentionBackward(dq.Cpu, dk.Cpu, dv.Cpu, dout.Cpu, o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
            c.Gpu.CudnnDeterministicWorkspaceLimit = limitBefore;
            c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
            var whole = new[] { dq.Gpu, dk.Gpu, dv.Gpu }.Select(g => c.Download(g)).ToArray();
            c.Gpu.CudnnDeterministicWorkspaceLimit = headSlice ? 2L * t * t * 2 * 13 / 10 : (long)(hq / hkv) * t * t * 2 * 3 / 2 + (1 << 20);
            foreach (var g in new[] { dq.Gpu, dk.Gpu, dv.Gpu }) c.Gpu.Upload(g, Enumerable.Repeat(float.NaN, (int)g.Length).ToArray());
            var calls = c.Gpu.CudnnCalls;
            c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
            bool ran = c.Gpu.CudnnCalls.Backward == calls.Backward + 1;
            var first = new[] { dq.Gpu, dk.Gpu, dv.Gpu }.Select(g => c.Download(g)).ToArray();
            double ms = c.TimeRepeat(() => c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
            c.Check($"attention_backward {tag}", "ran on cuDNN", ran, ms);
            c.Compare($"attention_backward {tag}", "dq", dq, ms);
            c.Compare($"attention_backward {tag}", "dk", dk, ms);
            c.Compare($"attention_backward {tag}", "dv", dv, ms);
            c.Check($"attention_backward {tag}", "bit-repeat", new[] { dq.Gpu, dk.Gpu, dv.Gpu }.Select((g, i) => c.Download(g).AsSpan().SequenceEqual(first[i])).All(x => x), ms);
            bool asWhole = first.Select((x, i) => x.AsSpan().SequenceEqual(whole[i])).All(x => x);
            Console.WriteLine($"info attention_backward {tag}: the sliced calls' bits {(asWhole ? "equal" : "differ from")} the one call's");
            if (!headSlice) c.Check($"attention_backward {tag}", "bits of the one call", asWhole, ms);
        }
        c.Gpu.CudnnDeterministicWorkspaceLimit = limitBefore;
        CudnnSequenceSliceRows(c);
        AttentionScratchRows(c);
        CudnnShapeCapRows(c);
        c.Gpu.AttentionKernels = before;
        foreach (var note in c.Gpu.CudnnNotes) Console.WriteLine($"info cuDNN: {note}");
    }

    // One sequence a call (CudaBackend.CudnnSequenceSlices, the default) against the widest slice the limit allows: the
    // same bits, the times of both (info), and the notes say how it was sliced. 32 heads × 16 query tiles fill the H200.
    static void CudnnSequenceSliceRows(Ctx c)
    {
        const int batch = 4, t = 2048, hq = 32, hkv = 8, d = 128;
        c.Gpu.AttentionKernels = AttentionKernels.Cudnn;
        var s = AttentionShape.Training(batch, t, hq, hkv, d) with { Unpacked = true };
        string tag = $"cudnn sequence slices B{batch} T{t} H{hq}/{hkv} D{d}";
        var (q, k, v, segT, o, lse) = UnpackedInputs(c, batch, t, hq, hkv, d);
        c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
        var dout = c.Pair(c.Rand(batch * t * hq * d), [batch * t, hq * d]);
        var grads = new[] { c.Zeros([batch * t, hq * d]), c.Zeros([batch * t, hkv * d]), c.Zeros([batch * t, hkv * d]) };
        (float[][] Bits, double Ms) Run(bool perSequence, long limit)
        {
            c.Gpu.CudnnSequenceSlices = perSequence;
            c.Gpu.CudnnDeterministicWorkspaceLimit = limit;
            foreach (var g in grads) c.Gpu.Upload(g.Gpu, Enumerable.Repeat(float.NaN, (int)g.Gpu.Length).ToArray());
            void Backward() => c.Gpu.AttentionBackward(grads[0].Gpu, grads[1].Gpu, grads[2].Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
            Backward();
            var bits = grads.Select(g => c.Download(g.Gpu)).ToArray();
            return (bits, c.TimeRepeat(Backward));
        }
        long limitBefore = c.Gpu.CudnnDeterministicWorkspaceLimit;
        bool before = c.Gpu.CudnnSequenceSlices;
        var calls = c.Gpu.CudnnCalls;
        var (one, oneMs) = Run(true, 4096L << 20); // first: the shape's note says how this one was sliced
        var (wide, wideMs) = Run(false, 4096L << 20);
        bool ran = c.Gpu.CudnnCalls.Backward >= calls.Backward + 2;
        c.Gpu.CudnnSequenceSlices = before;
        c.Gpu.CudnnDeterministicWorkspaceLimit = limitBefore;
        c.Check($"attention_backward {tag}", "ran on cuDNN", ran, oneMs);
        c.Check($"attention_backward {tag}", "bits of the widest slice", one.Select((x, i) => x.AsSpan().SequenceEqual(wide[i])).All(x => x), oneMs);
        // 32 heads × 16 query tiles a sequence: two sequences reach four times the H200's 132 multiprocessors.
        int perCall = 32 * 16 >= 4 * c.Gpu.Device.Info.Multiprocessors ? 1 : 2;
        c.Check($"attention_backward {tag}", $"noted as {batch / perCall} calls of {perCall} sequence(s)",
            c.Gpu.CudnnNotes.Any(n => n.Contains($"B{batch} T{t} H{hq}/{hkv}") && n.Contains($"{batch / perCall} call(s) of {perCall} sequence(s)")), oneMs);
        Console.WriteLine($"info attention_backward {tag}: sequence slices {oneMs:F3} ms, the widest slice {wideMs:F3} ms");
    }

    // The backward's workspace in the caller's scratch (IBackend.AttentionBackward; the model passes a layer's spent MLP
    // activations): cuDNN's deterministic backward with a scratch that holds the usual slice's workspace, one that holds
    // only a smaller slice's (more calls), one too small (borrowed as before), and the flash backward's F32 partials of a
    // packed (grouped-query) batch. Scratch and gradients are NaN first; every case must give the bits of no scratch.
    static void AttentionScratchRows(Ctx c)
    {
        const int batch = 2, t = 1024, hq = 16, hkv = 4, d = 64;
        var before = c.Gpu.AttentionKernels;
        var (q, k, v, segT, o, lse) = UnpackedInputs(c, batch, t, hq, hkv, d);
        var dout = c.Pair(c.Rand(batch * t * hq * d), [batch * t, hq * d]);
        var grads = new[] { c.Zeros([batch * t, hq * d]), c.Zeros([batch * t, hkv * d]), c.Zeros([batch * t, hkv * d]) };
        var packedSeg = c.IntPair(Enumerable.Range(0, batch * t).Select(i => i % t < 300 ? 0 : 1).ToArray(), [batch, t]);
        float[][] Backward(AttentionShape s, (Tensor Cpu, Tensor Gpu) seg, long scratchBytes)
        {
            Tensor? scratch = null;
            if (scratchBytes > 0)
            {
                scratch = new Tensor(c.Gpu.AllocateBuffer(scratchBytes), 0, DType.F32, [(int)(scratchBytes / 256), 64], "scratch");
                c.Gpu.Upload(scratch, Enumerable.Repeat(float.NaN, (int)scratch.Length).ToArray());
            }
            foreach (var g in grads) c.Gpu.Upload(g.Gpu, Enumerable.Repeat(float.NaN, (int)g.Gpu.Length).ToArray());
            c.Gpu.AttentionBackward(grads[0].Gpu, grads[1].Gpu, grads[2].Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, seg.Gpu, s, scratch);
            var bits = grads.Select(g => c.Download(g.Gpu)).ToArray();
            scratch?.Buffer.Dispose();
            return bits;
        }
        bool Same(float[][] a, float[][] b) => a.Select((x, i) => x.AsSpan().SequenceEqual(b[i])).All(x => x);

        c.Gpu.AttentionKernels = AttentionKernels.Cudnn;
        var unpacked = AttentionShape.Training(batch, t, hq, hkv, d) with { Unpacked = true };
        c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, unpacked);
        var reference = Backward(unpacked, segT, 0);
        string tag = $"cudnn scratch B{batch} T{t} H{hq}/{hkv} D{d}";
        // The whole problem's dP is 2·16·1024²·2 bytes = 64 MiB; one sequence and key/value head's 8 MiB.
        foreach (var (what, bytes, calls) in new[] { ("ample", 96L << 20, 1), ("one group's", 12L << 20, batch * hkv), ("too small", 1L << 20, 0) })
        {
            var calls0 = c.Gpu.CudnnCalls;
            var bits = Backward(unpacked, segT, bytes);
            c.Check($"attention_backward {tag}", $"{what} scratch: ran on cuDNN", c.Gpu.CudnnCalls.Backward == calls0.Backward + 1, 0);
            c.Check($"attention_backward {tag}", $"{what} scratch: the bits of no scratch", Same(bits, reference), 0);
            // Each (shape, slice) is noted once in the backend's life (an earlier pass of the checks may have noted it).
            bool noted = c.Gpu.CudnnNotes.Any(n => n.Contains($"B{batch} T{t} H{hq}/{hkv}") && n.Contains("spent activations") && n.Contains($"{calls} call(s)"));
            if (calls > 0) c.Check($"attention_backward {tag}", $"{what} scratch: noted as {calls} call(s) in it", noted, 0);
        }
        // The flash backward of a packed batch (two segments a row): its dK/dV partials in the scratch.
        var packed = AttentionShape.Training(batch, t, hq, hkv, d);
        c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, packedSeg.Gpu, packed);
        var flashReference = Backward(packed, packedSeg, 0);
        var flashBits = Backward(packed, packedSeg, 2L * batch * t * hq * d * 4 + 256);
        c.Check($"attention_backward flash scratch B{batch} T{t} H{hq}/{hkv} D{d} packed", "the bits of no scratch", Same(flashBits, flashReference), 0);
        c.Gpu.AttentionKernels = before;
    }

    // The shape cap (CudaBackend.CudnnMaxShapes): with the cap reached, a new shape runs the flash kernels (their bits,
    // no cuDNN call, a note), and a shape cuDNN already took still runs on cuDNN.
    static void CudnnShapeCapRows(Ctx c)
    {
        int capBefore = c.Gpu.CudnnMaxShapes;
        c.Gpu.AttentionKernels = AttentionKernels.Cudnn;
        var known = AttentionShape.Training(2, 77, 4, 2, 64) with { Unpacked = true }; // taken by the rows above
        var fresh = AttentionShape.Training(3, 96, 4, 2, 64) with { Unpacked = true };
        var (q, k, v, segT, o, lse) = UnpackedInputs(c, 3, 96, 4, 2, 64);
        c.Gpu.AttentionKernels = AttentionKernels.Flash;
        c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, fresh);
        var flashBits = c.Download(o.Gpu);
        c.Gpu.AttentionKernels = AttentionKernels.Cudnn;
        c.Gpu.CudnnMaxShapes = 0;
        var calls = c.Gpu.CudnnCalls;
        c.Gpu.Upload(o.Gpu, Enumerable.Repeat(float.NaN, (int)o.Gpu.Length).ToArray());
        c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, fresh);
        bool flashRan = c.Gpu.CudnnCalls.Forward == calls.Forward && c.Download(o.Gpu).AsSpan().SequenceEqual(flashBits);
        var (kq, kk, kv, kseg, ko, klse) = UnpackedInputs(c, 2, 77, 4, 2, 64);
        calls = c.Gpu.CudnnCalls;
        c.Gpu.Attention(ko.Gpu, klse.Gpu, kq.Gpu, kk.Gpu, kv.Gpu, kseg.Gpu, known);
        bool knownOnCudnn = c.Gpu.CudnnCalls.Forward == calls.Forward + 1;
        c.Gpu.CudnnMaxShapes = capBefore;
        c.Check("attention cudnn shape cap", "a new shape past the cap runs flash (its bits)", flashRan, 0);
        c.Check("attention cudnn shape cap", "a shape already taken stays on cuDNN", knownOnCudnn, 0);
        c.Check("attention cudnn shape cap", "noted", c.Gpu.CudnnNotes.Any(n => n.Contains("FINETUNE_CUDNN_MAX_SHAPES")), 0);
    }
}
