using System.Runtime.InteropServices;

namespace FineTune.Engine.Cuda;

// The optimizer (adamw.cu): the squared gradient norm and AdamW, per tensor and for a whole list in one launch. The
// list forms give each tensor the blocks its own launch would get (Blocks(n)) and the same grid-stride share per
// block, so the norm's partial sums, their order and every updated weight are the bits of the per-tensor calls; they
// only save the launches (a LoRA model has hundreds of trainable tensors, each a launch or two per step).
public sealed partial class CudaBackend
{
    public void SumOfSquares(Tensor x, Tensor acc)
    {
        Need(acc, DType.F32);
        if (x.Length == 0) return;
        // Block sums, then one block adds them in order: no atomics, so the norm is the same bits every run.
        int blocks = Blocks(x.Length);
        ulong partial = _dev.Allocate((long)blocks * sizeof(float));
        try
        {
            Launch("adamw.cu", "sum_of_squares_partial", (blocks, 1, 1), Threads, [P(x), Dt(x), x.Length, partial]);
            Launch("adamw.cu", "sum_into", (1, 1, 1), SumThreads, [partial, (long)blocks, P(acc)]);
        }
        finally { _dev.Free(partial); }
    }

    /// <summary>Threads of the block that adds a tensor's partial sums (sum_into, and each block of sum_into_many).</summary>
    const int SumThreads = 1024;

    public void SumOfSquaresMany(IReadOnlyList<Tensor> xs, Tensor acc)
    {
        Need(acc, DType.F32);
        // adamw.cu's SquaresEntry {x, n, first, dt | blocks << 32} per non-empty tensor (an empty one adds nothing).
        var entries = new ulong[4 * xs.Count];
        int count = 0;
        long totalBlocks = 0;
        foreach (var x in xs)
        {
            if (x.Length == 0) continue;
            int blocks = Blocks(x.Length);
            entries[4 * count] = P(x);
            entries[4 * count + 1] = (ulong)x.Length;
            entries[4 * count + 2] = (ulong)totalBlocks;
            entries[4 * count + 3] = Pack(Dt(x), blocks);
            totalBlocks += blocks;
            count++;
        }
        if (count == 0) return;
        ulong table = _squaresTable.Update<ulong>(_dev, entries.AsSpan(0, 4 * count));
        // Scratch: the done counter (16 bytes, zero between launches), the per-tensor totals, the per-block partials.
        long totalsAt = 16, partialsAt = totalsAt + 4L * count;
        ulong scratch = _squaresScratch.Reserve(_dev, partialsAt + 4 * totalBlocks);
        Launch("adamw.cu", "sum_of_squares_partial_many", (checked((int)totalBlocks), 1, 1), Threads, [table, count, scratch + (ulong)partialsAt]);
        Launch("adamw.cu", "sum_into_many", (count, 1, 1), SumThreads,
            [table, count, scratch + (ulong)partialsAt, scratch + (ulong)totalsAt, scratch, P(acc)]);
    }

    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step)
    {
        CheckAdamW(param, grad, m, v, computeCopy);
        var (bc1, bc2Sqrt) = BiasCorrections(step);
        LaunchFlat("adamw.cu", "adamw_step", param.Length,
        [
            P(param), P(grad), P(m), P(v), computeCopy is null ? 0UL : P(computeCopy), computeCopy is null ? 0 : Dt(computeCopy),
            gradNormSquared is null ? 0UL : P(gradNormSquared), param.Length, step.LearningRate, step.Beta1, step.Beta2, step.Epsilon,
            step.WeightDecay, bc1, bc2Sqrt, step.GradScale, step.MaxGradNorm,
        ]);
    }

    public void AdamWMany(IReadOnlyList<AdamWTensors> tensors, IReadOnlyList<AdamWStep> steps, Tensor? gradNormSquared)
    {
        if (tensors.Count != steps.Count) throw new ArgumentException($"{tensors.Count} AdamW updates for {steps.Count} steps");
        // adamw.cu's AdamWEntry {param, grad, m, v, copy, n, first, dt_copy | blocks << 32} and AdamWHyper (9 floats)
        // per non-empty entry.
        var entries = new ulong[8 * tensors.Count];
        var hyper = new float[9 * tensors.Count];
        int count = 0;
        long totalBlocks = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            var (param, grad, m, v, copy) = tensors[i];
            CheckAdamW(param, grad, m, v, copy);
            if (param.Length == 0) continue;
            int blocks = Blocks(param.Length);
            var e = entries.AsSpan(8 * count, 8);
            e[0] = P(param); e[1] = P(grad); e[2] = P(m); e[3] = P(v); e[4] = copy is null ? 0UL : P(copy);
            e[5] = (ulong)param.Length; e[6] = (ulong)totalBlocks; e[7] = Pack(copy is null ? 0 : Dt(copy), blocks);
            var step = steps[i];
            var (bc1, bc2Sqrt) = BiasCorrections(step);
            var h = hyper.AsSpan(9 * count, 9);
            h[0] = step.LearningRate; h[1] = step.Beta1; h[2] = step.Beta2; h[3] = step.Epsilon; h[4] = step.WeightDecay;
            h[5] = bc1; h[6] = bc2Sqrt; h[7] = step.GradScale; h[8] = step.MaxGradNorm;
            totalBlocks += blocks;
            count++;
        }
        if (count == 0) return;
        var entrySpan = entries.AsSpan(0, 8 * count);
        if (!_adamWTable.Holds<ulong>(entrySpan)) CheckDisjoint(tensors);
        ulong table = _adamWTable.Update<ulong>(_dev, entrySpan);
        ulong hyperTable = _adamWHyper.Update<float>(_dev, hyper.AsSpan(0, 9 * count));
        Launch("adamw.cu", "adamw_step_many", (checked((int)totalBlocks), 1, 1), Threads,
            [table, hyperTable, count, gradNormSquared is null ? 0UL : P(gradNormSquared)]);
    }

    void CheckAdamW(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor? computeCopy)
    {
        SameLength(param, grad); SameLength(param, m); SameLength(param, v);
        Need(param, DType.F32); Need(grad, DType.F32); Need(m, DType.F32); Need(v, DType.F32);
        if (computeCopy is not null) SameLength(param, computeCopy);
    }

    /// <summary>1 − β1^t and √(1 − β2^t) in float, exactly as the CPU backend computes them.</summary>
    static (float Bc1, float Bc2Sqrt) BiasCorrections(AdamWStep step) =>
        (1f - MathF.Pow(step.Beta1, step.Step), MathF.Sqrt(1f - MathF.Pow(step.Beta2, step.Step)));

    /// <summary>One launch runs every entry at once, so no two entries may write the same memory (the loop would run them in turn).</summary>
    void CheckDisjoint(IReadOnlyList<AdamWTensors> tensors)
    {
        var ranges = new List<(ulong Start, ulong End, string Name)>();
        foreach (var (param, grad, m, v, copy) in tensors)
            foreach (var t in copy is null ? new[] { param, grad, m, v } : [param, grad, m, v, copy])
                if (t.Length > 0) ranges.Add((P(t), P(t) + (ulong)(t.Length * t.DType.ByteSize()), t.ToString()));
        ranges.Sort((a, b) => a.Start.CompareTo(b.Start));
        for (int i = 1; i < ranges.Count; i++)
            if (ranges[i].Start < ranges[i - 1].End)
                throw new ArgumentException($"AdamWMany: '{ranges[i - 1].Name}' and '{ranges[i].Name}' overlap; one launch cannot step both");
    }

    /// <summary>A table's two 4-byte fields in one 8-byte slot (little-endian: <paramref name="low"/> first).</summary>
    static ulong Pack(int low, int high) => (uint)low | ((ulong)(uint)high << 32);

    readonly DeviceTable _squaresTable = new(), _squaresScratch = new(), _adamWTable = new(), _adamWHyper = new();

    /// <summary>
    /// Device memory a multi-tensor launch reads, kept between calls: a training step names the same tensors every
    /// time, so its table is uploaded once and the step then needs no allocation and no upload (inside a CUDA graph
    /// capture too, as long as nothing changed; a change there fails as any upload during a capture does). Grows by
    /// reallocation, never shrinks; one stream orders every upload after the kernels that read the old contents.
    /// </summary>
    sealed class DeviceTable
    {
        ulong _pointer;
        long _capacity;
        byte[] _held = [];
        int _heldLength = -1;

        public bool Holds<T>(ReadOnlySpan<T> contents) where T : unmanaged =>
            _heldLength >= 0 && MemoryMarshal.AsBytes(contents).SequenceEqual(_held.AsSpan(0, _heldLength));

        /// <summary>The device copy of <paramref name="contents"/>, uploaded only when they differ from the last call's.</summary>
        public ulong Update<T>(CudaDevice dev, ReadOnlySpan<T> contents) where T : unmanaged
        {
            if (Holds(contents)) return _pointer;
            var bytes = MemoryMarshal.AsBytes(contents);
            Reserve(dev, bytes.Length);
            dev.CopyToDevice(_pointer, bytes);
            if (_held.Length < bytes.Length) _held = new byte[bytes.Length];
            bytes.CopyTo(_held);
            _heldLength = bytes.Length;
            return _pointer;
        }

        /// <summary>At least <paramref name="bytes"/> bytes (zero-filled when newly allocated; contents kept otherwise).</summary>
        public ulong Reserve(CudaDevice dev, long bytes)
        {
            if (bytes <= _capacity) return _pointer;
            ulong grown = dev.Allocate(bytes);
            dev.Zero(grown, bytes);
            if (_pointer != 0) dev.Free(_pointer);
            (_pointer, _capacity, _heldLength) = (grown, bytes, -1);
            return _pointer;
        }
    }
}
