using System.Runtime.InteropServices;

namespace FineTune.Models.Tests.Formats;

/// <summary>
/// ggml's and llama.cpp's own code, as node-llama-cpp 3.21.1 ships it (tests/fixtures, `npm ci`): libggml-base.so
/// exports the quantizers (ggml_quantize_chunk, dequantize_row_*), libllama the whole of llama-quantize
/// (llama_model_quantize). The libraries are loaded by full path; their RUNPATH ($ORIGIN) finds their siblings.
/// </summary>
internal static unsafe class GgmlNative
{
    public static string BinDirectory { get; } =
        Path.Combine(NodeFixtures.FixturesDir, "node_modules", "@node-llama-cpp", "linux-x64", "bins", "linux-x64");

    private static readonly Lazy<nint> GgmlBase = new(() => Load("libggml-base.so"));
    private static readonly Lazy<nint> Llama = new(() => Load("libllama.v0.4.0.so"));

    private static nint Load(string file)
    {
        var path = Path.Combine(BinDirectory, file);
        if (!File.Exists(path))
            throw new InvalidOperationException($"{path} is missing. Install the fixtures with: (cd {NodeFixtures.FixturesDir} && npm ci)");
        return NativeLibrary.Load(path);
    }

    /// <summary>ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row, imatrix) with no importance matrix.</summary>
    public static byte[] Quantize(GgufTensorType type, float[] x, int rowLength)
    {
        var fn = (delegate* unmanaged[Cdecl]<int, float*, void*, long, long, long, float*, nuint>)NativeLibrary.GetExport(GgmlBase.Value, "ggml_quantize_chunk");
        long rows = x.Length / rowLength;
        var dst = new byte[rows * GgmlQuants.RowBytes(type, rowLength)];
        nuint written;
        fixed (float* src = x)
        fixed (byte* d = dst)
            written = fn((int)type, src, d, 0, rows, rowLength, null);
        if ((long)written != dst.Length)
            throw new InvalidOperationException($"ggml_quantize_chunk wrote {written} bytes, expected {dst.Length}");
        return dst;
    }

    /// <summary>ggml_type_size and ggml_blck_size: bytes and values per block.</summary>
    public static (long Bytes, long Values) BlockOf(GgufTensorType type)
    {
        var size = (delegate* unmanaged[Cdecl]<int, nuint>)NativeLibrary.GetExport(GgmlBase.Value, "ggml_type_size");
        var blck = (delegate* unmanaged[Cdecl]<int, long>)NativeLibrary.GetExport(GgmlBase.Value, "ggml_blck_size");
        return ((long)size((int)type), blck((int)type));
    }

    /// <summary>ggml's dequantize_row_&lt;type&gt;(blocks, y, k).</summary>
    public static float[] Dequantize(GgufTensorType type, byte[] blocks, int count)
    {
        var symbol = "dequantize_row_" + type.ToString().ToLowerInvariant().Replace("_k", "_K");
        var fn = (delegate* unmanaged[Cdecl]<byte*, float*, long, void>)NativeLibrary.GetExport(GgmlBase.Value, symbol);
        var y = new float[count];
        fixed (byte* b = blocks)
        fixed (float* o = y)
            fn(b, o, count);
        return y;
    }

    /// <summary>llama_model_quantize_params (include/llama.h of that llama.cpp), x86-64 layout.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct QuantizeParams
    {
        public int NThread;
        public uint FileType;
        public int OutputTensorType;
        public int TokenEmbeddingType;
        public byte AllowRequantize, QuantizeOutputTensor, OnlyCopy, Pure, KeepSplit, DryRun;
        public nint Imatrix, KvOverrides, TensorTypeOverrides, PruneLayers;
        public nuint MaxBufSize;
    }

    /// <summary>llama-quantize: reads <paramref name="input"/> (a GGUF) and writes it as <paramref name="fileType"/>.</summary>
    public static void LlamaQuantize(string input, string output, GgufFileType fileType)
    {
        var defaults = (delegate* unmanaged[Cdecl]<QuantizeParams>)NativeLibrary.GetExport(Llama.Value, "llama_model_quantize_default_params");
        var quantize = (delegate* unmanaged[Cdecl]<byte*, byte*, QuantizeParams*, uint>)NativeLibrary.GetExport(Llama.Value, "llama_model_quantize");
        var p = defaults();
        p.FileType = (uint)fileType;
        var inPath = Utf8(input);
        var outPath = Utf8(output);
        uint rc;
        fixed (byte* i = inPath)
        fixed (byte* o = outPath)
            rc = quantize(i, o, &p);
        if (rc != 0)
            throw new InvalidOperationException($"llama_model_quantize({input}, {fileType}) failed with {rc}");
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct InitParams
    {
        public nuint MemSize;
        public nint MemBuffer;
        public byte NoAlloc;
    }

    /// <summary>llama_quant_model_desc (src/llama-ext.h): the hyper-parameters llama-quantize's type choice reads.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct ModelDesc
    {
        public byte* Architecture;
        public uint NEmbd, NFf, NLayer, NHead, NHeadKv, NExpert, NEmbdHeadK, NEmbdHeadV;
    }

    /// <summary>
    /// llama.cpp's own per-tensor type choice (llama_quant_compute_types, the llama_tensor_get_type that llama-quantize
    /// runs) for tensors of the given names and shapes (outermost first), in the order given. Tensors llama-quantize
    /// does not quantize (llama_quant_tensor_allows_quantization false) keep their F32.
    /// </summary>
    public static GgufTensorType[] LlamaTensorTypes(string architecture, int embd, int ff, int layers, int heads, int kvHeads, int headDim,
        GgufFileType fileType, IReadOnlyList<(string Name, long[] Shape)> tensors)
    {
        var init = (delegate* unmanaged[Cdecl]<InitParams, nint>)NativeLibrary.GetExport(GgmlBase.Value, "ggml_init");
        var free = (delegate* unmanaged[Cdecl]<nint, void>)NativeLibrary.GetExport(GgmlBase.Value, "ggml_free");
        var newTensor = (delegate* unmanaged[Cdecl]<nint, int, int, long*, nint>)NativeLibrary.GetExport(GgmlBase.Value, "ggml_new_tensor");
        var setName = (delegate* unmanaged[Cdecl]<nint, byte*, nint>)NativeLibrary.GetExport(GgmlBase.Value, "ggml_set_name");
        var fromMetadata = (delegate* unmanaged[Cdecl]<ModelDesc*, nint>)NativeLibrary.GetExport(Llama.Value, "_Z31llama_quant_model_from_metadataPK22llama_quant_model_desc");
        var modelFree = (delegate* unmanaged[Cdecl]<nint, void>)NativeLibrary.GetExport(Llama.Value, "llama_model_free");
        var quantInit = (delegate* unmanaged[Cdecl]<nint, QuantizeParams*, nint>)NativeLibrary.GetExport(Llama.Value, "_Z16llama_quant_initPK11llama_modelPK27llama_model_quantize_params");
        var quantFree = (delegate* unmanaged[Cdecl]<nint, void>)NativeLibrary.GetExport(Llama.Value, "_Z16llama_quant_freeP19quantize_state_impl");
        var allows = (delegate* unmanaged[Cdecl]<nint, nint, byte>)NativeLibrary.GetExport(Llama.Value, "_Z38llama_quant_tensor_allows_quantizationPK19quantize_state_implPK11ggml_tensor");
        var compute = (delegate* unmanaged[Cdecl]<nint, uint, nint*, int*, nuint, void>)NativeLibrary.GetExport(Llama.Value, "_Z25llama_quant_compute_typesP19quantize_state_impl11llama_ftypePP11ggml_tensorP9ggml_typem");
        var defaults = (delegate* unmanaged[Cdecl]<QuantizeParams>)NativeLibrary.GetExport(Llama.Value, "llama_model_quantize_default_params");

        var ctx = init(new InitParams { MemSize = 64 << 20, NoAlloc = 1 });
        // llama_quant_init keeps pointers to the params and the model: both live until llama_quant_free.
        var paramsPtr = (QuantizeParams*)NativeMemory.Alloc((nuint)sizeof(QuantizeParams));
        var arch = Utf8(architecture);
        nint model = 0, qs = 0;
        try
        {
            *paramsPtr = defaults();
            fixed (byte* a = arch)
            {
                var desc = new ModelDesc
                {
                    Architecture = a, NEmbd = (uint)embd, NFf = (uint)ff, NLayer = (uint)layers, NHead = (uint)heads,
                    NHeadKv = (uint)kvHeads, NExpert = 0, NEmbdHeadK = (uint)headDim, NEmbdHeadV = (uint)headDim,
                };
                model = fromMetadata(&desc);
            }
            qs = quantInit(model, paramsPtr);
            var handles = new nint[tensors.Count];
            for (int i = 0; i < tensors.Count; i++)
            {
                var shape = tensors[i].Shape;
                var ne = new long[shape.Length];
                for (int d = 0; d < shape.Length; d++) ne[d] = shape[shape.Length - 1 - d];
                fixed (long* n = ne)
                    handles[i] = newTensor(ctx, (int)GgufTensorType.F32, ne.Length, n);
                fixed (byte* name = Utf8(tensors[i].Name))
                    setName(handles[i], name);
            }
            var quantizable = Enumerable.Range(0, tensors.Count).Where(i => allows(qs, handles[i]) != 0).ToArray();
            var selected = quantizable.Select(i => handles[i]).ToArray();
            var types = new int[selected.Length];
            fixed (nint* t = selected)
            fixed (int* r = types)
                compute(qs, (uint)fileType, t, r, (nuint)selected.Length);
            var result = Enumerable.Repeat(GgufTensorType.F32, tensors.Count).ToArray();
            for (int k = 0; k < quantizable.Length; k++)
                result[quantizable[k]] = (GgufTensorType)types[k];
            return result;
        }
        finally
        {
            if (qs != 0) quantFree(qs);
            if (model != 0) modelFree(model);
            NativeMemory.Free(paramsPtr);
            free(ctx);
        }
    }

    private static byte[] Utf8(string s) => [.. System.Text.Encoding.UTF8.GetBytes(s), 0];
}
