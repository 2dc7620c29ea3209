using System.Security.Cryptography;
using System.Text;
using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

public sealed class KernelSourcesTests
{
    [Fact]
    public void Every_operation_kernel_is_embedded_as_its_own_program()
    {
        var programs = KernelSources.Embedded().Programs.ToArray();
        Assert.Equal(["adamw.cu", "argmax.cu", "attention.cu", "cross_entropy.cu", "decode.cu", "elementwise.cu", "embedding.cu", "experts.cu", "fp8.cu", "geglu.cu", "gemv.cu", "kv_cache.cu", "quant.cu", "rmsnorm.cu", "rope.cu", "sampling.cu", "softcap.cu", "swiglu.cu"],
            programs.Where(p => !p.StartsWith("flash", StringComparison.Ordinal)).ToArray());
    }

    [Fact]
    public void The_shared_header_is_offered_to_every_program_and_each_program_includes_it()
    {
        var s = KernelSources.Embedded();
        Assert.Contains("common.cuh", s.Headers.Keys);
        Assert.Contains("cvt.rn.bf16.f32", s.Headers["common.cuh"]);
        // Directly, or through shared headers that include it (split_attention.cuh → attention_row.cuh → common.cuh).
        foreach (var p in s.Programs)
            Assert.Contains("common.cuh", Includes(s, s.Source(p)));
        Assert.Contains("attention_row.cuh", Includes(s, s.Source("kv_cache.cu")));
        Assert.Contains("split_attention.cuh", Includes(s, s.Source("decode.cu"))); // decode_layer's attention stage is kv_cache.cu's
    }

    /// <summary>The headers a source includes, directly or through the headers it includes.</summary>
    static HashSet<string> Includes(KernelSources s, string source)
    {
        var found = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>([source]);
        while (pending.TryPop(out var text))
            foreach (var h in s.Headers)
                if (text.Contains($"#include \"{h.Key}\"") && found.Add(h.Key)) pending.Push(h.Value);
        return found;
    }

    [Fact]
    public void Each_program_declares_its_kernels_extern_C_so_the_driver_finds_them_by_name()
    {
        var s = KernelSources.Embedded();
        Assert.Contains("extern \"C\" __global__ void rmsnorm_forward(", s.Source("rmsnorm.cu"));
        Assert.Contains("extern \"C\" __global__ void attention_backward_dkv(", s.Source("attention.cu"));
        Assert.Contains("extern \"C\" __global__ void adamw_step(", s.Source("adamw.cu"));
        foreach (var kernel in new[] { "dequantize_4bit", "dequantize_int8", "adamw8bit_step" })
            Assert.Contains($"extern \"C\" __global__ void {kernel}(", s.Source("quant.cu"));
        // fp8: the launchers in CudaBackend.Fp8.cs / CudaBackend.Quantization.cs name these three.
        foreach (var kernel in new[] { "fp8_amax", "fp8_quantize", "fp8_dequantize" })
            Assert.Contains($"extern \"C\" __global__ void {kernel}(", s.Source("fp8.cu"));
        Assert.Contains("extern \"C\" __global__ void cached_attention_forward(", s.Source("kv_cache.cu"));
        Assert.Contains("extern \"C\" __global__ void argmax_rows(", s.Source("argmax.cu"));
        Assert.Contains("extern \"C\" __global__ void cross_entropy(", s.Source("cross_entropy.cu"));
        Assert.Contains("extern \"C\" __global__ void label_log_probs(", s.Source("cross_entropy.cu"));
    }

    [Fact]
    public void The_tensor_core_helpers_are_defined_once_in_mma_cuh_and_both_tensor_core_programs_include_it()
    {
        var s = KernelSources.Embedded();
        Assert.Contains("mma.cuh", s.Headers.Keys);
        var texts = s.Programs.Select(p => (Name: p, Text: s.Source(p))).Concat(s.Headers.Select(h => (Name: h.Key, Text: h.Value))).ToArray();
        foreach (var helper in new[] { "void mma16816(", "unsigned smem_addr(", "void ldsm_x4(", "void ldsm_x4_trans(", "void cp_async16(", "void cp_async_commit(", "void cp_async_wait(", "void frag_b_kn(" })
            Assert.Equal(["mma.cuh"], texts.Where(t => t.Text.Contains(helper)).Select(t => t.Name).ToArray());
        Assert.DoesNotContain(texts, t => t.Text.Contains("tc_ldsm_x4") || t.Text.Contains("tc_mma16816"));
        foreach (var program in new[] { "flash_attention.cu", "experts.cu" })
            Assert.Contains("#include \"mma.cuh\"", s.Source(program));
    }

    [Fact]
    public void Every_grouped_gemm_mma_variant_the_launcher_names_is_instantiated_in_experts_cu()
    {
        // GroupedMmaVariant maps each GroupedGemmKernel to ("grouped_gemm_mma_k{K}s{S}", K, S); experts.cu makes each with
        // GROUPED_GEMM_MMA(K, S), whose extern "C" name is pasted from the two numbers.
        var s = KernelSources.Embedded();
        string launcher = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "src", "FineTune.Engine", "Cuda", "CudaBackend.Experts.cs"));
        var variants = System.Text.RegularExpressions.Regex.Matches(launcher, "\\(\"grouped_gemm_mma_k(\\d+)s(\\d+)\", (\\d+), (\\d+)\\)")
            .Select(m => (Name: $"k{m.Groups[1].Value}s{m.Groups[2].Value}", K: m.Groups[3].Value, S: m.Groups[4].Value)).ToArray();
        Assert.Equal(["k64s3", "k32s3", "k32s4"], variants.Select(v => v.Name).ToArray());
        string experts = s.Source("experts.cu");
        Assert.Contains("grouped_gemm_mma_k##BK##s##STAGES(", experts);
        foreach (var v in variants)
        {
            Assert.Equal($"k{v.K}s{v.S}", v.Name);
            Assert.Contains($"\nGROUPED_GEMM_MMA({v.K}, {v.S})\n", experts);
        }
    }

    [Fact]
    public void Every_kernel_the_experts_launcher_names_is_defined_in_experts_cu()
    {
        // The launcher (CudaBackend.Experts.cs) names kernels by string: each must exist, or the GPU run fails on load.
        var s = KernelSources.Embedded();
        string launcher = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "src", "FineTune.Engine", "Cuda", "CudaBackend.Experts.cs"));
        var named = System.Text.RegularExpressions.Regex.Matches(launcher, "\"experts\\.cu\", \"(\\w+)\"").Select(m => m.Groups[1].Value).Distinct().Order().ToArray();
        Assert.Equal(["grouped_gemm", "grouped_gemm_tc", "grouped_gemm_weight_grad", "grouped_gemm_weight_grad_mma", "grouped_gemm_weight_grad_tc", "moe_combine", "moe_combine_backward_rows",
            "moe_combine_backward_v8", "moe_combine_backward_weights", "moe_combine_down_backward", "moe_combine_down_backward_v8", "moe_combine_v8", "moe_count",
            "moe_gather_backward", "moe_gather_backward_v8", "moe_place", "moe_route", "moe_route_backward", "moe_router_stats", "moe_scan"], named);
        foreach (var kernel in named) // with or without __launch_bounds__
            Assert.Matches($"extern \"C\" __global__ void (__launch_bounds__\\([^)]*\\) )?{kernel}\\(", s.Source("experts.cu"));
    }

    [Fact]
    public void Every_kernel_a_launcher_names_exists_and_takes_as_many_parameters_as_the_launch_passes()
    {
        // Launch("x.cu", "name", grid, block, [args]), LaunchFlat("x.cu", "name", n, [args]), LaunchDependent(…) and
        // LaunchDecode("name", columns, shared, [args]) (decode.cu) in CudaBackend*.cs: the kernel must be extern "C" in
        // that program, and a wrong argument count would read garbage on the GPU, unseen here. Arguments built in a
        // variable count as the nearest `new KernelArg[n]` before the launch; a kernel's parameters may be a macro
        // (decode.cu's NORM_SET_PARAMS).
        var s = KernelSources.Embedded();
        string dir = Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "src", "FineTune.Engine", "Cuda");
        int checkedLaunches = 0, fromVariables = 0, decode = 0;
        foreach (var file in Directory.GetFiles(dir, "CudaBackend*.cs"))
        {
            string text = File.ReadAllText(file);
            foreach (System.Text.RegularExpressions.Match m in System.Text.RegularExpressions.Regex.Matches(text, "\\bLaunch(?:(?:Flat|Dependent)?\\(\"(\\w+\\.cu)\", \"(\\w+)\"|Decode\\(\"(\\w+)\")"))
            {
                bool isDecode = m.Groups[3].Success;
                string program = isDecode ? "decode.cu" : m.Groups[1].Value, kernel = isDecode ? m.Groups[3].Value : m.Groups[2].Value;
                var call = Arguments(text, m.Index + m.Value.IndexOf('('));
                string? list = call.FirstOrDefault(a => a.StartsWith('['));
                int passed;
                if (list is not null) passed = Arguments(list, 0, '[', ']').Count(a => a.Length > 0);
                else
                {
                    Assert.Contains("args", call); // last, or before the shared-memory size
                    var sized = System.Text.RegularExpressions.Regex.Matches(text[..m.Index], "new KernelArg\\[(\\d+)\\]");
                    Assert.True(sized.Count > 0, $"{kernel}: its argument array is not sized in {Path.GetFileName(file)}");
                    passed = int.Parse(sized[^1].Groups[1].Value);
                    fromVariables++;
                }
                string source = s.Source(program);
                var def = System.Text.RegularExpressions.Regex.Match(source, $"extern \"C\" __global__ void (__launch_bounds__\\([^)]*\\) )?{kernel}(\\(| (\\w+)\n)");
                Assert.True(def.Success, $"{kernel} is not defined in {program}");
                int open = def.Groups[3].Success
                    ? source.IndexOf('(', source.IndexOf($"#define {def.Groups[3].Value} (", StringComparison.Ordinal))
                    : def.Index + def.Length - 1;
                int declared = Arguments(source, open).Count(a => a.Length > 0);
                Assert.True(passed == declared, $"{kernel} ({program}) declares {declared} parameters; {Path.GetFileName(file)} passes {passed}");
                checkedLaunches++;
                if (isDecode) decode++;
            }
        }
        Assert.True(checkedLaunches > 60, $"only {checkedLaunches} launches found");
        Assert.True(fromVariables >= 2 && decode == 3, $"{fromVariables} launches with an argument variable, {decode} LaunchDecode calls found");
    }

    /// <summary>The top-level comma-separated parts between the bracket at <paramref name="open"/> and its match, trimmed.</summary>
    static List<string> Arguments(string text, int open, char left = '(', char right = ')')
    {
        Assert.Equal(left, text[open]);
        var parts = new List<string>();
        int depth = 0, start = open + 1;
        for (int i = open; i < text.Length; i++)
        {
            char c = text[i];
            if (c is '(' or '[' or '{') depth++;
            else if (c is ')' or ']' or '}')
            {
                if (--depth == 0) { parts.Add(text[start..i].Trim()); return parts; }
            }
            else if (c == ',' && depth == 1) { parts.Add(text[start..i].Trim()); start = i + 1; }
        }
        throw new InvalidOperationException($"no closing {right} after {open}");
    }

    static KernelSources Tiny(string body, string header = "#pragma once\n") =>
        new(new Dictionary<string, string> { ["a.cu"] = body, ["common.cuh"] = header });

    [Fact]
    public void The_fingerprint_is_the_SHA256_of_program_headers_options_and_compiler()
    {
        var s = Tiny("k");
        string expected = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(
            "program\0a.cu\0k\0header\0common.cuh\0#pragma once\n\0option\0--gpu-architecture=sm_90\0compiler\0nvrtc 13.0")));
        Assert.Equal(expected, s.Fingerprint("a.cu", ["--gpu-architecture=sm_90"], "nvrtc 13.0"));
    }

    [Fact]
    public void Changing_the_source_a_header_the_architecture_or_the_compiler_changes_the_fingerprint()
    {
        string[] opts = ["--gpu-architecture=sm_90"];
        string baseFp = Tiny("k").Fingerprint("a.cu", opts, "13.0");
        Assert.NotEqual(baseFp, Tiny("k2").Fingerprint("a.cu", opts, "13.0"));
        Assert.NotEqual(baseFp, Tiny("k", "#pragma once\n//x").Fingerprint("a.cu", opts, "13.0"));
        Assert.NotEqual(baseFp, Tiny("k").Fingerprint("a.cu", ["--gpu-architecture=sm_80"], "13.0"));
        Assert.NotEqual(baseFp, Tiny("k").Fingerprint("a.cu", opts, "12.8"));
        Assert.Equal(baseFp, Tiny("k").Fingerprint("a.cu", opts, "13.0"));
    }
}
