using System.Runtime.InteropServices;

namespace FineTune.Engine.Cuda;

/// <summary>
/// A <see cref="CudnnGraph"/> lowered to cuDNN backend descriptors and finalized into an execution plan: every
/// tensor and operation descriptor, the operation graph, the heuristics' engine configurations (mode A, then the
/// fallback list) tried in order until one finalizes. What each refused configuration said is kept in
/// <see cref="Refusals"/> for the device checks to print.
/// </summary>
internal sealed unsafe class CudnnPlan : IDisposable
{
    readonly Cudnn _dnn;
    readonly List<nint> _owned = [];
    readonly Dictionary<long, nint> _tensors = [];
    readonly nint _plan;
    float* _scalars; // by-value scalars' host copies, one per by-value tensor, in graph order
    readonly long[] _uids;
    nint _pack;
    nint[] _packPointers = [];
    ulong _packWorkspace;

    public CudnnGraph Graph { get; }
    public long WorkspaceBytes { get; }

    /// <summary>Which configuration finalized, e.g. "heuristics A #0 of 9 (engine 8)".</summary>
    public string Engine { get; } = "";

    /// <summary>One line per engine configuration that would not finalize (before the one taken).</summary>
    public List<string> Refusals { get; } = [];

    /// <param name="skip">How many configurations that finalize to pass over (0: the heuristics' first that does);
    /// the device checks time the later ones.</param>
    public CudnnPlan(Cudnn dnn, CudnnGraph graph, string what, int skip = 0)
    {
        _dnn = dnn;
        Graph = graph;
        var problems = graph.Problems();
        if (problems.Count > 0) throw new ArgumentException($"{what}: malformed cuDNN graph: {string.Join("; ", problems)}");
        var byValue = graph.Tensors.Where(t => t.IsByValue).ToList();
        _scalars = (float*)NativeMemory.Alloc((nuint)Math.Max(1, byValue.Count), sizeof(float));
        for (int i = 0; i < byValue.Count; i++) _scalars[i] = byValue[i].Value!.Value;
        _uids = graph.Tensors.Where(t => !t.IsVirtual).Select(t => t.Uid).ToArray();
        try
        {
            foreach (var t in graph.Tensors) _tensors[t.Uid] = TensorDescriptor(t);
            var ops = graph.Operations.Select(OperationDescriptor).ToArray();
            var opGraph = Own(CudnnDescriptorType.OperationGraph);
            var handle = dnn.Handle;
            dnn.Set(opGraph, $"{what} operation graph", CudnnAttribute.OPERATIONGRAPH_HANDLE, CudnnAttributeType.HANDLE, 1, &handle);
            fixed (nint* p = ops)
                dnn.Set(opGraph, $"{what} operation graph", CudnnAttribute.OPERATIONGRAPH_OPS, CudnnAttributeType.BACKEND_DESCRIPTOR, ops.Length, p);
            dnn.Finalize(opGraph, $"{what} operation graph of {ops.Length} operations");
            (_plan, Engine) = FirstPlan(opGraph, what, skip);
            WorkspaceBytes = dnn.GetInt64(_plan, $"{what} execution plan", CudnnAttribute.EXECUTION_PLAN_WORKSPACE_SIZE);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    nint Own(CudnnDescriptorType type)
    {
        var d = _dnn.Create(type);
        _owned.Add(d);
        return d;
    }

    nint TensorDescriptor(CudnnTensor t)
    {
        var d = Own(CudnnDescriptorType.Tensor);
        string what = $"tensor {t}";
        _dnn.SetDataType(d, what, CudnnAttribute.TENSOR_DATA_TYPE, t.Type);
        _dnn.SetInt64s(d, what, CudnnAttribute.TENSOR_DIMENSIONS, t.Dims);
        _dnn.SetInt64s(d, what, CudnnAttribute.TENSOR_STRIDES, t.Strides);
        _dnn.SetInt64(d, what, CudnnAttribute.TENSOR_UNIQUE_ID, t.Uid);
        _dnn.SetInt64(d, what, CudnnAttribute.TENSOR_BYTE_ALIGNMENT, 16);
        if (t.IsVirtual) _dnn.SetBool(d, what, CudnnAttribute.TENSOR_IS_VIRTUAL, true);
        if (t.IsByValue) _dnn.SetBool(d, what, CudnnAttribute.TENSOR_IS_BY_VALUE, true);
        _dnn.Finalize(d, what);
        return d;
    }

    nint OperationDescriptor(CudnnOperation op)
    {
        string what = $"operation '{op.Name}'";
        switch (op)
        {
            case CudnnMatmul m:
            {
                var desc = Own(CudnnDescriptorType.Matmul);
                _dnn.SetDataType(desc, what, CudnnAttribute.MATMUL_COMP_TYPE, CudnnDataType.FLOAT);
                _dnn.Finalize(desc, what + " matmul descriptor");
                var d = Own(CudnnDescriptorType.OperationMatmul);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_MATMUL_ADESC, _tensors[m.A.Uid]);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_MATMUL_BDESC, _tensors[m.B.Uid]);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_MATMUL_CDESC, _tensors[m.C.Uid]);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_MATMUL_DESC, desc);
                _dnn.Finalize(d, what);
                return d;
            }
            case CudnnPointwise p:
            {
                var desc = Own(CudnnDescriptorType.Pointwise);
                int mode = (int)p.Mode;
                _dnn.Set(desc, what, CudnnAttribute.POINTWISE_MODE, CudnnAttributeType.POINTWISE_MODE, 1, &mode);
                _dnn.SetDataType(desc, what, CudnnAttribute.POINTWISE_MATH_PREC, p.Compute);
                if (p.Axis is long axis) _dnn.SetInt64(desc, what, CudnnAttribute.POINTWISE_AXIS, axis);
                _dnn.Finalize(desc, what + " pointwise descriptor");
                var d = Own(CudnnDescriptorType.OperationPointwise);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_POINTWISE_PW_DESCRIPTOR, desc);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_POINTWISE_XDESC, _tensors[p.X.Uid]);
                if (p.B is not null) _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_POINTWISE_BDESC, _tensors[p.B.Uid]);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_POINTWISE_YDESC, _tensors[p.Y.Uid]);
                if (p.T is not null) _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_POINTWISE_TDESC, _tensors[p.T.Uid]);
                float alpha = 1f;
                _dnn.Set(d, what, CudnnAttribute.OPERATION_POINTWISE_ALPHA1, CudnnAttributeType.FLOAT, 1, &alpha);
                _dnn.Set(d, what, CudnnAttribute.OPERATION_POINTWISE_ALPHA2, CudnnAttributeType.FLOAT, 1, &alpha);
                _dnn.Finalize(d, what);
                return d;
            }
            case CudnnReduce r:
            {
                var desc = Own(CudnnDescriptorType.Reduction);
                int mode = (int)r.Mode;
                _dnn.Set(desc, what, CudnnAttribute.REDUCTION_OPERATOR, CudnnAttributeType.REDUCTION_OPERATOR_TYPE, 1, &mode);
                _dnn.SetDataType(desc, what, CudnnAttribute.REDUCTION_COMP_TYPE, CudnnDataType.FLOAT);
                _dnn.Finalize(desc, what + " reduction descriptor");
                var d = Own(CudnnDescriptorType.OperationReduction);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_REDUCTION_XDESC, _tensors[r.X.Uid]);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_REDUCTION_YDESC, _tensors[r.Y.Uid]);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_REDUCTION_DESC, desc);
                _dnn.Finalize(d, what);
                return d;
            }
            case CudnnReshape s:
            {
                var d = Own(CudnnDescriptorType.OperationReshape);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_RESHAPE_XDESC, _tensors[s.X.Uid]);
                _dnn.SetDescriptor(d, what, CudnnAttribute.OPERATION_RESHAPE_YDESC, _tensors[s.Y.Uid]);
                _dnn.Finalize(d, what);
                return d;
            }
            default:
                throw new ArgumentException($"no lowering for {op.GetType().Name}");
        }
    }

    // Heuristics mode A's configurations in order, then the fallback list's; the first whose plan finalizes wins
    // (after `skip` others that do).
    (nint Plan, string Engine) FirstPlan(nint opGraph, string what, int skip)
    {
        int finalized = 0;
        foreach (var mode in new[] { CudnnHeuristicMode.A, CudnnHeuristicMode.FALLBACK })
        {
            var heur = Own(CudnnDescriptorType.EngineHeuristics);
            string hw = $"{what} heuristics {mode}";
            _dnn.SetDescriptor(heur, hw, CudnnAttribute.ENGINEHEUR_OPERATION_GRAPH, opGraph);
            int m = (int)mode;
            _dnn.Set(heur, hw, CudnnAttribute.ENGINEHEUR_MODE, CudnnAttributeType.HEUR_MODE, 1, &m);
            int st = _dnn.TryFinalize(heur);
            if (st != Cudnn.StatusSuccess) { Refusals.Add($"heuristics {mode}: {_dnn.Error(st, "cudnnBackendFinalize(engine heuristics)").Message}"); continue; }
            long count = 0;
            st = _dnn.TryGet(heur, CudnnAttribute.ENGINEHEUR_RESULTS, CudnnAttributeType.BACKEND_DESCRIPTOR, 0, &count, null);
            if (st != Cudnn.StatusSuccess || count == 0)
            {
                Refusals.Add($"heuristics {mode}: " + (st != Cudnn.StatusSuccess ? _dnn.Error(st, "result count").Message : "no engine configuration"));
                continue;
            }
            var configs = new nint[count];
            for (int i = 0; i < count; i++) configs[i] = Own(CudnnDescriptorType.EngineConfig);
            long got = 0;
            fixed (nint* p = configs)
                _dnn.Check(_dnn.TryGet(heur, CudnnAttribute.ENGINEHEUR_RESULTS, CudnnAttributeType.BACKEND_DESCRIPTOR, count, &got, p),
                    $"cudnnBackendGetAttribute({hw}, CUDNN_ATTR_ENGINEHEUR_RESULTS)");
            for (int i = 0; i < got; i++)
            {
                var plan = _dnn.Create(CudnnDescriptorType.ExecutionPlan);
                var handle = _dnn.Handle;
                var cfg = configs[i];
                _dnn.Set(plan, $"{hw} plan", CudnnAttribute.EXECUTION_PLAN_HANDLE, CudnnAttributeType.HANDLE, 1, &handle);
                _dnn.SetDescriptor(plan, $"{hw} plan", CudnnAttribute.EXECUTION_PLAN_ENGINE_CONFIG, cfg);
                st = _dnn.TryFinalize(plan);
                string engine = EngineIndex(cfg) is long e ? $" (engine {e})" : "";
                if (st == Cudnn.StatusSuccess && finalized++ >= skip)
                {
                    _owned.Add(plan);
                    return (plan, $"heuristics {mode} #{i} of {got}{engine}");
                }
                if (st == Cudnn.StatusSuccess)
                {
                    _dnn.Destroy(plan);
                    continue;
                }
                Refusals.Add($"heuristics {mode} #{i}{engine}: {_dnn.Error(st, "cudnnBackendFinalize(execution plan)").Message}");
                _dnn.Destroy(plan);
            }
        }
        if (finalized > 0)
            throw new CudnnException($"{what}: only {finalized} engine configuration(s) finalize, none to take after skipping {skip}", 3000);
        throw new CudnnException($"{what}: no engine configuration of cuDNN {_dnn.VersionText} finalizes this graph:\n  " +
            string.Join("\n  ", Refusals), 3000);
    }

    // The engine's global index, for the report; null where cuDNN does not say.
    long? EngineIndex(nint config)
    {
        var engine = _dnn.Create(CudnnDescriptorType.Engine);
        try
        {
            long n = 0, index = -1;
            if (_dnn.TryGet(config, CudnnAttribute.ENGINECFG_ENGINE, CudnnAttributeType.BACKEND_DESCRIPTOR, 1, &n, &engine) != Cudnn.StatusSuccess) return null;
            return _dnn.TryGet(engine, CudnnAttribute.ENGINE_GLOBAL_INDEX, CudnnAttributeType.INT64, 1, &n, &index) == Cudnn.StatusSuccess ? index : null;
        }
        finally { _dnn.Destroy(engine); }
    }

    /// <summary>
    /// Runs the plan on the handle's stream. <paramref name="pointers"/> gives a device pointer for every bound
    /// tensor of the graph, by name; <paramref name="workspace"/> holds at least <see cref="WorkspaceBytes"/>. The variant
    /// pack is rebuilt only when a pointer changes.
    /// </summary>
    public void Execute(IReadOnlyDictionary<string, ulong> pointers, ulong workspace, string what)
    {
        var ptrs = new nint[_uids.Length];
        int scalar = 0;
        for (int i = 0; i < _uids.Length; i++)
        {
            var t = Graph.Tensors[(int)_uids[i] - 1];
            if (t.IsByValue) ptrs[i] = (nint)(_scalars + scalar++);
            else if (pointers.TryGetValue(t.Name, out var p) && p != 0) ptrs[i] = (nint)p;
            else throw new ArgumentException($"{what}: no device pointer for the graph's tensor {t.Name}");
        }
        // The last variant pack is kept and reused while the pointers stay the same (a repeated step's case).
        if (_pack != 0 && workspace == _packWorkspace && ptrs.AsSpan().SequenceEqual(_packPointers))
        {
            _dnn.Execute(_plan, _pack, what);
            return;
        }
        _dnn.Destroy(_pack);
        _pack = 0;
        var pack = _dnn.Create(CudnnDescriptorType.VariantPack);
        var ws = (nint)workspace;
        try
        {
            fixed (long* u = _uids)
            fixed (nint* p = ptrs)
            {
                _dnn.Set(pack, $"{what} variant pack", CudnnAttribute.VARIANT_PACK_UNIQUE_IDS, CudnnAttributeType.INT64, _uids.Length, u);
                _dnn.Set(pack, $"{what} variant pack", CudnnAttribute.VARIANT_PACK_DATA_POINTERS, CudnnAttributeType.VOID_PTR, ptrs.Length, p);
                _dnn.Set(pack, $"{what} variant pack", CudnnAttribute.VARIANT_PACK_WORKSPACE, CudnnAttributeType.VOID_PTR, 1, &ws);
                _dnn.Finalize(pack, $"{what} variant pack");
            }
        }
        catch
        {
            _dnn.Destroy(pack);
            throw;
        }
        (_pack, _packPointers, _packWorkspace) = (pack, ptrs, workspace);
        _dnn.Execute(_plan, pack, what);
    }

    public void Dispose()
    {
        _dnn.Destroy(_pack);
        _pack = 0;
        for (int i = _owned.Count - 1; i >= 0; i--) _dnn.Destroy(_owned[i]);
        _owned.Clear();
        if (_scalars != null) NativeMemory.Free(_scalars);
        _scalars = null;
    }
}
