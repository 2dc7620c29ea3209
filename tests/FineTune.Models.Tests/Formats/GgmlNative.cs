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
        p.NThread = 1;
        var inPath = Utf8(input);
        var outPath = Utf8(output);
        uint rc;
        fixed (byte* i = inPath)
        fixed (byte* o = outPath)
            rc = quantize(i, o, &p);
        if (rc != 0)
            throw new InvalidOperationException($"llama_model_quantize({input}, {fileType}) failed with {rc}");
    }

    private static byte[] Utf8(string s) => [.. System.Text.Encoding.UTF8.GetBytes(s), 0];
}
