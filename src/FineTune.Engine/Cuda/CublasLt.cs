using System.Runtime.InteropServices;

namespace FineTune.Engine.Cuda;

/// <summary>Element types the GPU kernels and cuBLASLt see.</summary>
public enum GpuDType { F32, BF16, I32, E4M3, E5M2 }

/// <summary>cuBLASLt epilogues FineTune uses: plain, or + bias broadcast over rows (a Linear layer's bias).</summary>
public enum GemmEpilogue { None, Bias }

/// <summary>
/// cuBLASLt (libcublasLt.so.13/.12/.11) for every matrix product. The API is column-major; FineTune's tensors
/// are row-major, so a row-major C[m,n] = op(A)[m,k]·op(B)[k,n] is issued as the column-major product
/// Cᵀ[n,m] = op(B)ᵀ·op(A)ᵀ, i.e. with the operands swapped and the same transpose flags.
/// Descriptors, layouts and the heuristic's algorithm are cached per shape, so a repeated step makes no
/// heuristic queries. bf16 inputs accumulate in fp32 (CUBLAS_COMPUTE_32F); fp32 inputs stay exact fp32 (no TF32).
/// </summary>
internal sealed unsafe class CublasLt : IDisposable
{
    public static readonly string[] LibraryNames = OperatingSystem.IsWindows()
        ? ["cublasLt64_13.dll", "cublasLt64_12.dll", "cublasLt64_11.dll"]
        : ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"];

    const int CUBLAS_COMPUTE_32F = 68;
    const int CUDA_R_32F = 0, CUDA_R_16BF = 14, CUDA_R_8F_E4M3 = 28, CUDA_R_8F_E5M2 = 29;
    const int DESC_SCALE_TYPE = 1, DESC_TRANSA = 3, DESC_TRANSB = 4, DESC_EPILOGUE = 7, DESC_BIAS_POINTER = 8, DESC_BIAS_DATA_TYPE = 26;
    const int DESC_A_SCALE_POINTER = 17, DESC_B_SCALE_POINTER = 18, DESC_FAST_ACCUM = 25;
    const int LAYOUT_BATCH_COUNT = 5, LAYOUT_STRIDED_BATCH_OFFSET = 6;
    const int PREF_MAX_WORKSPACE_BYTES = 1, PREF_MIN_ALIGNMENT_A = 5, PREF_MIN_ALIGNMENT_B = 6, PREF_MIN_ALIGNMENT_C = 7, PREF_MIN_ALIGNMENT_D = 8;
    const int EPILOGUE_DEFAULT = 1, EPILOGUE_BIAS = 4;

    [StructLayout(LayoutKind.Sequential)]
    struct HeuristicResult
    {
        public fixed ulong Algo[8];
        public nuint WorkspaceSize;
        public int State;
        public float WavesCount;
        public fixed int Reserved[4];
    }

    readonly NativeLibraryProbe _lib;
    readonly delegate* unmanaged<nint*, int> _create;
    readonly delegate* unmanaged<nint, int> _destroy;
    readonly delegate* unmanaged<nint*, int, int, int> _descCreate;
    readonly delegate* unmanaged<nint, int, void*, nuint, int> _descSet;
    readonly delegate* unmanaged<nint, int> _descDestroy;
    readonly delegate* unmanaged<nint*, int, ulong, ulong, long, int> _layoutCreate;
    readonly delegate* unmanaged<nint, int, void*, nuint, int> _layoutSet;
    readonly delegate* unmanaged<nint, int> _layoutDestroy;
    readonly delegate* unmanaged<nint*, int> _prefCreate;
    readonly delegate* unmanaged<nint, int, void*, nuint, int> _prefSet;
    readonly delegate* unmanaged<nint, int> _prefDestroy;
    readonly delegate* unmanaged<nint, nint, nint, nint, nint, nint, nint, int, HeuristicResult*, int*, int> _heuristic;
    readonly delegate* unmanaged<nint, nint, void*, ulong, nint, ulong, nint, void*, ulong, nint, ulong, nint, void*, ulong, nuint, nint, int> _matmul;
    readonly delegate* unmanaged<int, byte*> _statusString;

    readonly nint _handle;
    readonly ulong _workspace;
    readonly long _workspaceBytes;
    readonly Dictionary<PlanKey, Plan> _plans = new();

    public string LibraryName => _lib.LoadedName;

    readonly record struct PlanKey(bool TransA, bool TransB, int M, int N, int K, int Lda, int Ldb, int Ldc,
        GpuDType A, GpuDType B, GpuDType C, int Batch, long StrideA, long StrideB, long StrideC, GemmEpilogue Epilogue,
        uint AlignA, uint AlignB, uint AlignC, bool FastAccum = false);

    /// <summary>Largest power of two (at most 256) dividing the address: views into arenas need not be 256-aligned.</summary>
    static uint Alignment(ulong p) => p == 0 ? 256u : (uint)Math.Min(256UL, p & (~p + 1));

    sealed class Plan
    {
        public nint Desc, LayoutA, LayoutB, LayoutC;
        public HeuristicResult Heuristic;
    }

    CublasLt(NativeLibraryProbe lib, ulong workspace, long workspaceBytes)
    {
        _lib = lib;
        _create = (delegate* unmanaged<nint*, int>)lib.Export("cublasLtCreate");
        _destroy = (delegate* unmanaged<nint, int>)lib.Export("cublasLtDestroy");
        _descCreate = (delegate* unmanaged<nint*, int, int, int>)lib.Export("cublasLtMatmulDescCreate");
        _descSet = (delegate* unmanaged<nint, int, void*, nuint, int>)lib.Export("cublasLtMatmulDescSetAttribute");
        _descDestroy = (delegate* unmanaged<nint, int>)lib.Export("cublasLtMatmulDescDestroy");
        _layoutCreate = (delegate* unmanaged<nint*, int, ulong, ulong, long, int>)lib.Export("cublasLtMatrixLayoutCreate");
        _layoutSet = (delegate* unmanaged<nint, int, void*, nuint, int>)lib.Export("cublasLtMatrixLayoutSetAttribute");
        _layoutDestroy = (delegate* unmanaged<nint, int>)lib.Export("cublasLtMatrixLayoutDestroy");
        _prefCreate = (delegate* unmanaged<nint*, int>)lib.Export("cublasLtMatmulPreferenceCreate");
        _prefSet = (delegate* unmanaged<nint, int, void*, nuint, int>)lib.Export("cublasLtMatmulPreferenceSetAttribute");
        _prefDestroy = (delegate* unmanaged<nint, int>)lib.Export("cublasLtMatmulPreferenceDestroy");
        _heuristic = (delegate* unmanaged<nint, nint, nint, nint, nint, nint, nint, int, HeuristicResult*, int*, int>)lib.Export("cublasLtMatmulAlgoGetHeuristic");
        _matmul = (delegate* unmanaged<nint, nint, void*, ulong, nint, ulong, nint, void*, ulong, nint, ulong, nint, void*, ulong, nuint, nint, int>)lib.Export("cublasLtMatmul");
        _statusString = (delegate* unmanaged<int, byte*>)lib.TryExport("cublasLtGetStatusString");
        nint h;
        Check(_create(&h), "cublasLtCreate");
        _handle = h;
        _workspace = workspace;
        _workspaceBytes = workspaceBytes;
    }

    public static CublasLt Load(ulong workspace, long workspaceBytes) =>
        new(NativeLibraryProbe.TryLoad(LibraryNames, out var tried)
            ?? throw new CudaUnavailableException($"no cuBLASLt: none of [{tried}] could be loaded"), workspace, workspaceBytes);

    void Check(int status, string call)
    {
        if (status == 0) return;
        string text = _statusString != null ? Marshal.PtrToStringUTF8((nint)_statusString(status)) ?? "" : "";
        throw new CudaException($"{call} failed: cuBLAS status {status} {text}");
    }

    static int CudaType(GpuDType t) => t switch
    {
        GpuDType.F32 => CUDA_R_32F,
        GpuDType.BF16 => CUDA_R_16BF,
        GpuDType.E4M3 => CUDA_R_8F_E4M3,
        GpuDType.E5M2 => CUDA_R_8F_E5M2,
        _ => throw new ArgumentException($"cuBLASLt matmul does not take {t}"),
    };

    /// <summary>
    /// Row-major C[m,n] = alpha·op(A)·op(B) + beta·C (+ bias[n] broadcast over rows), batched with element strides.
    /// op(A) is [m,k]: A is stored [m,k] (lda ≥ k) or, transposed, [k,m] (lda ≥ m); likewise op(B) is [k,n].
    /// </summary>
    public void Gemm(bool transA, bool transB, int m, int n, int k,
        ulong a, int lda, ulong b, int ldb, ulong c, int ldc, GpuDType abType, GpuDType cType,
        float alpha, float beta, nint stream, int batch = 1, long strideA = 0, long strideB = 0, long strideC = 0,
        ulong bias = 0, GemmEpilogue epilogue = GemmEpilogue.None)
    {
        var key = new PlanKey(transA, transB, m, n, k, lda, ldb, ldc, abType, abType, cType, batch, strideA, strideB, strideC, epilogue,
            Alignment(a), Alignment(b), Alignment(c));
        Run(key, a, b, c, alpha, beta, stream, bias, 0, 0);
    }

    /// <summary>
    /// Row-major C[m,n] = alpha·(scaleA·A)[m,k]·(scaleB·B)[n,k]ᵀ + beta·C with FP8 A and B (E4M3 or E5M2, not both E5M2),
    /// C BF16 or F32, f32 accumulation. scaleA/scaleB are device pointers to one f32 each. Both operands are read along k
    /// (cuBLASLt's FP8 kernels take only its "TN" form, which is this one after the operand swap of the class comment);
    /// k and n must be multiples of 16, the operands 16-byte aligned. <paramref name="fastAccum"/> lets the FP8 tensor
    /// cores accumulate in their own reduced-precision accumulator for the whole k loop instead of adding into f32 every
    /// few k blocks (cuBLASLt's FAST_ACCUM): faster, less exact; Transformer Engine's recipes take it for forward products
    /// only, as the training code here does.
    /// </summary>
    public void GemmFp8(int m, int n, int k, ulong a, GpuDType aType, ulong scaleA, ulong b, GpuDType bType, ulong scaleB,
        ulong c, int ldc, GpuDType cType, float alpha, float beta, nint stream, bool fastAccum = false)
    {
        if (aType is not (GpuDType.E4M3 or GpuDType.E5M2) || bType is not (GpuDType.E4M3 or GpuDType.E5M2) || (aType == GpuDType.E5M2 && bType == GpuDType.E5M2))
            throw new ArgumentException($"cuBLASLt FP8 products take E4M3·E4M3 or one E5M2 operand, not {aType}·{bType}");
        if (k % 16 != 0 || n % 16 != 0) throw new ArgumentException($"cuBLASLt FP8 products need k and n multiples of 16, got k={k} n={n}");
        var key = new PlanKey(false, true, m, n, k, k, k, ldc, aType, bType, cType, 1, 0, 0, 0, GemmEpilogue.None,
            Alignment(a), Alignment(b), Alignment(c), fastAccum);
        Run(key, a, b, c, alpha, beta, stream, 0, scaleA, scaleB);
    }

    void Run(PlanKey key, ulong a, ulong b, ulong c, float alpha, float beta, nint stream, ulong bias, ulong scaleA, ulong scaleB)
    {
        if (!_plans.TryGetValue(key, out var plan)) _plans[key] = plan = CreatePlan(key, scaleA, scaleB);
        var epilogue = key.Epilogue;
        int m = key.M, n = key.N, k = key.K, batch = key.Batch;
        if (scaleA != 0)
        {
            // cuBLASLt's A is our B and its B our A (see the class comment).
            Check(_descSet(plan.Desc, DESC_A_SCALE_POINTER, &scaleB, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
            Check(_descSet(plan.Desc, DESC_B_SCALE_POINTER, &scaleA, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
        }
        if (epilogue == GemmEpilogue.Bias)
            Check(_descSet(plan.Desc, DESC_BIAS_POINTER, &bias, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
        var h = plan.Heuristic;
        // cuBLASLt's first operand is our B, its second our A (see the class comment); C and D are the same buffer.
        Check(_matmul(_handle, plan.Desc, &alpha, b, plan.LayoutB, a, plan.LayoutA, &beta, c, plan.LayoutC, c, plan.LayoutC,
            h.Algo, _workspace, (nuint)_workspaceBytes, stream), $"cublasLtMatmul(m={m}, n={n}, k={k}, batch={batch})");
    }

    Plan CreatePlan(PlanKey key, ulong scaleA, ulong scaleB)
    {
        var p = new Plan();
        nint desc;
        Check(_descCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
        p.Desc = desc;
        int scale = CUDA_R_32F;
        Check(_descSet(desc, DESC_SCALE_TYPE, &scale, sizeof(int)), "cublasLtMatmulDescSetAttribute(SCALE_TYPE)");
        int opFirst = key.TransB ? 1 : 0, opSecond = key.TransA ? 1 : 0;
        Check(_descSet(desc, DESC_TRANSA, &opFirst, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSA)");
        Check(_descSet(desc, DESC_TRANSB, &opSecond, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSB)");
        uint epi = key.Epilogue == GemmEpilogue.Bias ? (uint)EPILOGUE_BIAS : EPILOGUE_DEFAULT;
        Check(_descSet(desc, DESC_EPILOGUE, &epi, sizeof(uint)), "cublasLtMatmulDescSetAttribute(EPILOGUE)");
        if (scaleA != 0)
        {
            Check(_descSet(desc, DESC_A_SCALE_POINTER, &scaleB, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
            Check(_descSet(desc, DESC_B_SCALE_POINTER, &scaleA, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
            sbyte fast = key.FastAccum ? (sbyte)1 : (sbyte)0; // an int8_t attribute
            Check(_descSet(desc, DESC_FAST_ACCUM, &fast, sizeof(sbyte)), "cublasLtMatmulDescSetAttribute(FAST_ACCUM)");
        }
        if (key.Epilogue == GemmEpilogue.Bias)
        {
            int bt = CudaType(key.C);
            Check(_descSet(desc, DESC_BIAS_DATA_TYPE, &bt, sizeof(int)), "cublasLtMatmulDescSetAttribute(BIAS_DATA_TYPE)");
        }
        // Column-major views: our B is cuBLAS's A, our A is cuBLAS's B, C is [n rows, m cols].
        p.LayoutB = Layout(key.B, key.TransB ? key.K : key.N, key.TransB ? key.N : key.K, key.Ldb, key.Batch, key.StrideB);
        p.LayoutA = Layout(key.A, key.TransA ? key.M : key.K, key.TransA ? key.K : key.M, key.Lda, key.Batch, key.StrideA);
        p.LayoutC = Layout(key.C, key.N, key.M, key.Ldc, key.Batch, key.StrideC);

        nint pref;
        Check(_prefCreate(&pref), "cublasLtMatmulPreferenceCreate");
        try
        {
            ulong ws = (ulong)_workspaceBytes;
            Check(_prefSet(pref, PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ulong)), "cublasLtMatmulPreferenceSetAttribute");
            // cuBLASLt's first operand is our B (see the class comment).
            uint alA = key.AlignB, alB = key.AlignA, alC = key.AlignC;
            Check(_prefSet(pref, PREF_MIN_ALIGNMENT_A, &alA, sizeof(uint)), "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_A)");
            Check(_prefSet(pref, PREF_MIN_ALIGNMENT_B, &alB, sizeof(uint)), "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_B)");
            Check(_prefSet(pref, PREF_MIN_ALIGNMENT_C, &alC, sizeof(uint)), "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_C)");
            Check(_prefSet(pref, PREF_MIN_ALIGNMENT_D, &alC, sizeof(uint)), "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_D)");
            HeuristicResult r;
            int returned = 0;
            Check(_heuristic(_handle, desc, p.LayoutB, p.LayoutA, p.LayoutC, p.LayoutC, pref, 1, &r, &returned), "cublasLtMatmulAlgoGetHeuristic");
            if (returned == 0)
                throw new CudaException($"cuBLASLt has no algorithm for m={key.M} n={key.N} k={key.K} {key.A}·{key.B}->{key.C} transA={key.TransA} transB={key.TransB}");
            p.Heuristic = r;
        }
        finally { _prefDestroy(pref); }
        return p;
    }

    nint Layout(GpuDType t, int rows, int cols, int ld, int batch, long stride)
    {
        nint l;
        Check(_layoutCreate(&l, CudaType(t), (ulong)rows, (ulong)cols, ld), $"cublasLtMatrixLayoutCreate({rows}x{cols}, ld={ld})");
        if (batch > 1)
        {
            Check(_layoutSet(l, LAYOUT_BATCH_COUNT, &batch, sizeof(int)), "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)");
            Check(_layoutSet(l, LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(long)), "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)");
        }
        return l;
    }

    public void Dispose()
    {
        foreach (var p in _plans.Values)
        {
            _layoutDestroy(p.LayoutA); _layoutDestroy(p.LayoutB); _layoutDestroy(p.LayoutC); _descDestroy(p.Desc);
        }
        _plans.Clear();
        _destroy(_handle);
    }
}
