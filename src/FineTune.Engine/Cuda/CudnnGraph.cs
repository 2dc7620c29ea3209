namespace FineTune.Engine.Cuda;

/// <summary>
/// A tensor of a cuDNN operation graph: dimensions and strides in elements (outermost first). Virtual tensors live
/// only inside the fused kernel; the others are bound to device memory by name when the plan runs, except by-value
/// scalars, whose <see cref="Value"/> travels in the variant pack from host memory.
/// </summary>
internal sealed record CudnnTensor(long Uid, string Name, long[] Dims, long[] Strides, CudnnDataType Type, bool IsVirtual, float? Value = null)
{
    public bool IsByValue => Value is not null;

    /// <summary>Bound to device memory at execution (neither virtual nor by-value).</summary>
    public bool IsBound => !IsVirtual && !IsByValue;

    public override string ToString() => $"{Name}#{Uid} {Type} [{string.Join(",", Dims)}] strides [{string.Join(",", Strides)}]{(IsVirtual ? " virtual" : "")}";
}

/// <summary>One operation node of a cuDNN graph (the backend's CUDNN_BACKEND_OPERATION_*_DESCRIPTOR).</summary>
internal abstract record CudnnOperation(string Name)
{
    public abstract IEnumerable<CudnnTensor> Inputs { get; }
    public abstract CudnnTensor Output { get; }
}

/// <summary>C = A·B over the last two dimensions, broadcast over the leading ones (GQA: A's heads over B's groups).</summary>
internal sealed record CudnnMatmul(string Name, CudnnTensor A, CudnnTensor B, CudnnTensor C) : CudnnOperation(Name)
{
    public override IEnumerable<CudnnTensor> Inputs => [A, B];
    public override CudnnTensor Output => C;
}

/// <summary>Y = mode(X[, B][, T]) elementwise with broadcasting; T is BINARY_SELECT's condition; Axis is GEN_INDEX's.</summary>
internal sealed record CudnnPointwise(string Name, CudnnPointwiseMode Mode, CudnnTensor X, CudnnTensor? B, CudnnTensor? T, CudnnTensor Y,
    CudnnDataType Compute, long? Axis = null) : CudnnOperation(Name)
{
    public override IEnumerable<CudnnTensor> Inputs => new[] { X, B, T }.OfType<CudnnTensor>();
    public override CudnnTensor Output => Y;
}

/// <summary>Y = reduce(X) over every dimension where Y's size is 1 and X's is not.</summary>
internal sealed record CudnnReduce(string Name, CudnnReduction Mode, CudnnTensor X, CudnnTensor Y) : CudnnOperation(Name)
{
    public override IEnumerable<CudnnTensor> Inputs => [X];
    public override CudnnTensor Output => Y;
}

/// <summary>Y is X seen through other dimensions/strides (a transpose of the last two, in the attention graphs).</summary>
internal sealed record CudnnReshape(string Name, CudnnTensor X, CudnnTensor Y) : CudnnOperation(Name)
{
    public override IEnumerable<CudnnTensor> Inputs => [X];
    public override CudnnTensor Output => Y;
}

/// <summary>
/// A cuDNN operation graph described in plain C# (no native calls): tensors with unique ids and operations in
/// topological order. <see cref="CudnnPlan"/> lowers it to backend descriptors; tests check its shape here.
/// </summary>
internal sealed class CudnnGraph
{
    readonly List<CudnnTensor> _tensors = [];
    readonly List<CudnnOperation> _operations = [];

    public IReadOnlyList<CudnnTensor> Tensors => _tensors;
    public IReadOnlyList<CudnnOperation> Operations => _operations;

    /// <summary>The tensors bound to device memory at execution, by name.</summary>
    public IEnumerable<CudnnTensor> Bound => _tensors.Where(t => t.IsBound);

    public CudnnTensor this[string name] => _tensors.FirstOrDefault(t => t.Name == name)
        ?? throw new KeyNotFoundException($"the cuDNN graph has no tensor '{name}'");

    CudnnTensor Add(string name, long[] dims, long[] strides, CudnnDataType type, bool isVirtual, float? value = null)
    {
        if (dims.Length != strides.Length) throw new ArgumentException($"tensor {name}: {dims.Length} dims but {strides.Length} strides");
        var t = new CudnnTensor(_tensors.Count + 1, name, dims, strides, type, isVirtual, value);
        _tensors.Add(t);
        return t;
    }

    /// <summary>A tensor in device memory (an input, an output or a workspace intermediate).</summary>
    public CudnnTensor Memory(string name, long[] dims, long[] strides, CudnnDataType type) => Add(name, dims, strides, type, false);

    /// <summary>An f32 scalar passed by value: dims and strides of <paramref name="rank"/> ones (it broadcasts).</summary>
    public CudnnTensor Scalar(string name, float value, int rank = 1) =>
        Add(name, Enumerable.Repeat(1L, rank).ToArray(), Enumerable.Repeat(1L, rank).ToArray(), CudnnDataType.FLOAT, false, value);

    public CudnnTensor Virtual(string name, long[] dims, long[] strides, CudnnDataType type = CudnnDataType.FLOAT) => Add(name, dims, strides, type, true);

    /// <summary>A virtual f32 tensor with the dims and strides of <paramref name="like"/> (a pointwise result).</summary>
    public CudnnTensor VirtualLike(string name, CudnnTensor like, CudnnDataType type = CudnnDataType.FLOAT) => Virtual(name, like.Dims, like.Strides, type);

    public CudnnTensor Matmul(string name, CudnnTensor a, CudnnTensor b, CudnnTensor c)
    {
        _operations.Add(new CudnnMatmul(name, a, b, c));
        return c;
    }

    public CudnnTensor Pointwise(string name, CudnnPointwiseMode mode, CudnnTensor x, CudnnTensor? b, CudnnTensor y,
        CudnnDataType compute = CudnnDataType.FLOAT, CudnnTensor? t = null, long? axis = null)
    {
        _operations.Add(new CudnnPointwise(name, mode, x, b, t, y, compute, axis));
        return y;
    }

    public CudnnTensor Reduce(string name, CudnnReduction mode, CudnnTensor x, CudnnTensor y)
    {
        _operations.Add(new CudnnReduce(name, mode, x, y));
        return y;
    }

    public CudnnTensor Reshape(string name, CudnnTensor x, CudnnTensor y)
    {
        _operations.Add(new CudnnReshape(name, x, y));
        return y;
    }

    /// <summary>
    /// What is structurally wrong, one line each (empty when nothing): an operation reading a virtual tensor no
    /// earlier operation wrote, a tensor written twice or never read (virtual), an output written by none.
    /// </summary>
    public List<string> Problems()
    {
        var problems = new List<string>();
        var written = new HashSet<long>();
        var read = new HashSet<long>();
        foreach (var op in _operations)
        {
            foreach (var x in op.Inputs)
            {
                read.Add(x.Uid);
                if (x.IsVirtual && !written.Contains(x.Uid)) problems.Add($"{op.Name} reads {x.Name} before any operation writes it");
            }
            if (op.Output.IsByValue) problems.Add($"{op.Name} writes the by-value scalar {op.Output.Name}");
            if (!written.Add(op.Output.Uid)) problems.Add($"{op.Name} writes {op.Output.Name}, already written");
        }
        foreach (var t in _tensors)
        {
            if (t.IsVirtual && !read.Contains(t.Uid)) problems.Add($"virtual {t.Name} is never read");
            if (!read.Contains(t.Uid) && !written.Contains(t.Uid)) problems.Add($"{t.Name} is in no operation");
        }
        if (_tensors.Select(t => t.Uid).Distinct().Count() != _tensors.Count) problems.Add("tensor ids are not unique");
        return problems;
    }

    /// <summary>The graph as text, one operation a line with its tensors (what a refused graph was, for the log).</summary>
    public string Describe() => string.Join("\n", _operations.Select(op =>
        $"{op.Name} ({op.GetType().Name[5..]}{(op is CudnnPointwise p ? $" {p.Mode} compute {p.Compute}{(p.Axis is long a ? $" axis {a}" : "")}" : op is CudnnReduce r ? $" {r.Mode}" : "")}): " +
        $"{string.Join(", ", op.Inputs)} -> {op.Output}"));

    /// <summary>Strides of a densely packed tensor, last dimension fastest.</summary>
    public static long[] Packed(params long[] dims)
    {
        var s = new long[dims.Length];
        long n = 1;
        for (int i = dims.Length - 1; i >= 0; i--) { s[i] = n; n *= dims[i]; }
        return s;
    }
}
