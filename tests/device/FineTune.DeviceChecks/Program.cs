using System.Text.Json;
using FineTune.DeviceChecks;
using FineTune.Engine.Cuda;

// Usage:
//   FineTune.DeviceChecks compile [sm_90] [a.cu,b.cu]   compile every kernel program (or those named) with NVRTC (no GPU needed)
//   FineTune.DeviceChecks ops [outDir]         CUDA vs CPU backend, op by op, F32 and BF16 paths
//   FineTune.DeviceChecks models [outDir]      whole tiny models of each flavour, CUDA vs CPU (DEVICECHECKS_MODELS=a,b: only those flavours)
//   FineTune.DeviceChecks generate [outDir]    only the generation engine rows of `models` (graphs, fused layers, launch modes) → generate.json
//   FineTune.DeviceChecks bench [--profile] shape:batch:seq:ckpt ...   LoRA step throughput (JSON lines)
//   FineTune.DeviceChecks flash [outDir]       only the BF16 attention checks of `ops` (plain, gemma's windows/soft-caps, head_dim 256) → flash.json
//   FineTune.DeviceChecks decode [outDir]      only the fused decode-layer operations of `ops` (decode.cu) → decode.json
//   FineTune.DeviceChecks flashbench           flash kernels alone at the bench models' attention shapes, per tile shape
//   FineTune.DeviceChecks cudnn [outDir]       cuDNN's fused attention (backend graph API) vs the flash kernels: values, times,
//                                              cuDNN's refusals and errors → cudnn.json (FINETUNE_CUDNN=<libcudnn file> picks the library)
//   FineTune.DeviceChecks fp8 [outDir]         FP8 frozen weights only: casts, products, a LoRA step fp8 vs bf16 (also in ops/models)
//   FineTune.DeviceChecks quant [outDir]       write the files tests/device/bnb_reference.py compares (CPU only)
//   FineTune.DeviceChecks quant-base <model> <out>   the model with its decoder linears NF4-quantized then dequantized (f32)
// Exit code 1 when any check exceeds its tolerance.
var cmd = args.Length > 0 ? args[0] : "ops";
var outDir = Environment.GetEnvironmentVariable("OUT") ?? ".";
switch (cmd)
{
    case "compile":
    {
        var arch = args.Length > 1 ? args[1] : "sm_90";
        var only = args.Length > 2 ? args[2].Split(',', StringSplitOptions.RemoveEmptyEntries) : null;
        var (lib, ver, results) = KernelCompiler.CompileAll(arch, only: only);
        if (only is not null && results.Count != only.Length)
        {
            Console.Error.WriteLine($"compile: unknown program among '{args[2]}' (programs are the .cu files of src/FineTune.Engine/Cuda/Kernels)");
            return 2;
        }
        Console.WriteLine($"NVRTC {ver} ({lib}) for {arch}:");
        foreach (var r in results) Console.WriteLine($"  {r.Program,-20} {r.CubinBytes,8} B  {r.Seconds:F2} s");
        return 0;
    }
    case "ops":
    {
        if (args.Length > 1) outDir = args[1];
        var rows = OpChecks.Run();
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "ops.json"), JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true }));
        return rows.All(r => r.Pass) ? 0 : 1;
    }
    case "flash":
    {
        if (args.Length > 1) outDir = args[1];
        var rows = OpChecks.RunFlash();
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "flash.json"), JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true }));
        return rows.All(r => r.Pass) ? 0 : 1;
    }
    case "decode":
    {
        if (args.Length > 1) outDir = args[1];
        var rows = OpChecks.RunDecode();
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "decode.json"), JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true }));
        return rows.All(r => r.Pass) ? 0 : 1;
    }
    case "models":
    {
        if (args.Length > 1) outDir = args[1];
        var rows = ModelChecks.Run();
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "models.json"), JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true }));
        int failed = rows.Count(r => !r.Pass);
        Console.WriteLine($"model checks: {rows.Count - failed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }
    case "generate":
    {
        if (args.Length > 1) outDir = args[1];
        var rows = new List<CheckRow>();
        using (var cpu = new FineTune.Engine.Cpu.CpuBackend())
        using (var gpuF32 = new CudaBackend(0, computeDType: FineTune.Engine.DType.F32))
        using (var gpu = new CudaBackend(0))
            GenerationChecks.Run(cpu, gpuF32, gpu, rows);
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "generate.json"), JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true }));
        int failed = rows.Count(r => !r.Pass);
        Console.WriteLine($"generate checks: {rows.Count - failed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }
    case "bench":
    {
        bool profile = args.Contains("--profile");
        return Bench.RunAll(args.Skip(1).Where(a => a != "--profile").ToArray(), profile);
    }
    case "lora":
        LoraTimes.Run();
        return 0;
    case "fp8":
    {
        if (args.Length > 1) outDir = args[1];
        var rows = new List<CheckRow>();
        using (var cpu = new FineTune.Engine.Cpu.CpuBackend())
        using (var gpu = new CudaBackend(0))
            Fp8Checks.Run(cpu, gpu, rows);
        rows.AddRange(ModelChecks.Fp8TrainStep());
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "fp8.json"), JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true }));
        int failed = rows.Count(r => !r.Pass);
        Console.WriteLine($"fp8 checks: {rows.Count - failed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }
    case "flashbench":
        return FlashBench.Run();
    case "cudnn":
        if (args.Length > 1) outDir = args[1];
        return CudnnChecks.Run(outDir);
    case "quant-base":
        // quant-base <model dir> <out dir>: the model with every decoder linear NF4 (double-quantized) → dequantized, f32.
        FineTune.Models.LoraMerge.Merge(args[1], null, args[2], FineTune.Models.SafetensorsDType.F32, quantizedBase: new FineTune.Models.Quantization.QuantizationSetup(4));
        return 0;
    case "quant":
        QuantChecks.WriteReferenceFiles(args.Length > 1 ? args[1] : outDir);
        return 0;
    default:
        Console.Error.WriteLine($"unknown command '{cmd}': use compile, ops, flash, decode, models, generate, fp8, bench, flashbench, cudnn or quant");
        return 2;
}
