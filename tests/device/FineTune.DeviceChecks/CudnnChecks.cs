using System.Text.Json;
using System.Text.Json.Serialization;
using FineTune.Engine;
using FineTune.Engine.Cuda;

namespace FineTune.DeviceChecks;

/// <summary>
/// `cudnn`: cuDNN's fused attention (<see cref="CudnnAttention"/>, causal GQA bf16 through the backend graph API)
/// against FineTune's flash kernels at small and bench shapes. Prints the cuDNN libraries found and the one loaded
/// (FINETUNE_CUDNN=path picks another), its version; per shape the graph variant (<see cref="SdpaGraphOptions"/>) and
/// engine each plan took, the variants and engine configurations cuDNN refused and why, the relative L2 of O, lse,
/// dQ, dK, dV against the flash kernels (bf16 tolerance 1e-2) and both sides' device time and TFLOP/s (profile marks, mean of 5 calls after a warm-up; 4·D·Hq FLOPs per causal
/// (query, key) pair forward, 2.5 times that backward, as <see cref="FlashBench"/> counts). A refused or failing
/// case prints cuDNN's status, the descriptor and attribute, and cuDNN's last error, then the next case runs.
/// cuDNN's own error log goes to stderr (<see cref="Cudnn.EnableDiagnosticLogging"/>). One JSON line per shape;
/// all rows → cudnn.json. Exit 1 when any case fails or misses its tolerance.
/// </summary>
public static class CudnnChecks
{
    const double Tolerance = 1e-2;

    // A broken output's relative error is NaN, which plain JSON cannot hold: written as "NaN".
    static readonly JsonSerializerOptions Json = new() { NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    static readonly (string Name, int B, int T, int Hq, int Hkv, int D)[] Shapes =
    [
        ("small", 1, 300, 4, 2, 128), ("small d64", 1, 300, 4, 2, 64), ("mha d128", 1, 512, 4, 4, 128),
        ("qwen3-0.6b", 1, 2048, 16, 8, 128), ("qwen2.5-0.5b d64", 4, 2048, 14, 2, 64), ("llama3-8b", 1, 4096, 32, 8, 128),
    ];

    public static int Run(string outDir)
    {
        Cudnn.EnableDiagnosticLogging(); // before libcudnn loads: it reads the variables once
        var files = Cudnn.FindLibraryFiles();
        Console.WriteLine($"libcudnn files found: {(files.Count == 0 ? "none outside the loader's path" : string.Join(", ", files))}");
        var chosen = Environment.GetEnvironmentVariable("FINETUNE_CUDNN");
        using var gpu = new CudaBackend(0);
        CudnnAttention dnn;
        try { dnn = new CudnnAttention(gpu.Device, string.IsNullOrEmpty(chosen) ? null : chosen); }
        catch (CudaException e)
        {
            Console.WriteLine($"cuDNN did not load: {e.Message}");
            return 1;
        }
        Console.WriteLine($"cuDNN {dnn.Library.VersionText} (cudnnGetVersion {dnn.Library.Version}, built for CUDA runtime {dnn.Library.CudartVersion}) loaded from {dnn.Library.LibraryName}" +
            (files.Count > 1 ? "; FINETUNE_CUDNN=<file> runs another" : ""));
        if (dnn.Library.Version is 91000 or 91001)
            Console.WriteLine("warning: cudnn-frontend refuses the bf16 SDPA backward on cuDNN 9.10.0/9.10.1 (known bugs); expect its dQ/dK/dV to be wrong here");
        if (dnn.Library.Preloaded.Count > 0) Console.WriteLine($"loaded first, by path: {string.Join(", ", dnn.Library.Preloaded)}");
        var rows = new List<object>();
        bool ok = true;
        int otherEngineCount = int.TryParse(Environment.GetEnvironmentVariable("FINETUNE_CUDNN_ENGINES"), out var n) ? n : 0;
        var described = new HashSet<string>(); // directions whose graph was printed after a failure: once each
        using (dnn)
        {
            foreach (var shape in Shapes)
            {
                var (row, pass) = RunShape(gpu, dnn, shape, described, otherEngineCount);
                Console.WriteLine(JsonSerializer.Serialize(row, Json));
                rows.Add(row);
                ok &= pass;
            }
        }
        Console.WriteLine($"cuDNN/cuBLAS/NVRTC files mapped after the run: {string.Join(", ", Cudnn.MappedFiles())}");
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "cudnn.json"), JsonSerializer.Serialize(rows, new JsonSerializerOptions(Json) { WriteIndented = true }));
        return ok ? 0 : 1;
    }

    static (object Row, bool Pass) RunShape(CudaBackend gpu, CudnnAttention dnn, (string Name, int B, int T, int Hq, int Hkv, int D) c, HashSet<string> described,
        int otherEngineCount)
    {
        var (name, b, t, hq, hkv, d) = c;
        var s = AttentionShape.Training(b, t, hq, hkv, d);
        var ss = new SdpaShape(b, t, hq, hkv, d, s.Scale);
        var rng = new Random(11);
        var made = new List<Tensor>();
        Tensor Alloc(DType type, params int[] dims) { var x = gpu.Allocate(type, dims); made.Add(x); return x; }
        Tensor Rand(int rows, int cols)
        {
            var x = Alloc(DType.BF16, rows, cols);
            var v = new float[(long)rows * cols];
            for (long i = 0; i < v.Length; i++) v[i] = (float)(rng.NextDouble() * 2 - 1);
            gpu.Upload(x, v);
            return x;
        }
        var q = Rand(b * t, hq * d); var k = Rand(b * t, hkv * d); var v = Rand(b * t, hkv * d); var dout = Rand(b * t, hq * d);
        var seg = Alloc(DType.I32, b, t);
        gpu.Upload(seg, new int[b * t]);
        Tensor Out(int cols) => Alloc(DType.BF16, b * t, cols);
        var (o, lse, dq, dk, dv) = (Out(hq * d), Alloc(DType.F32, b, hq, t), Out(hq * d), Out(hkv * d), Out(hkv * d));
        var (o2, lse2, dq2, dk2, dv2) = (Out(hq * d), Alloc(DType.F32, b, hq, t), Out(hq * d), Out(hkv * d), Out(hkv * d));
        ulong P(Tensor x) => gpu.DevicePointer(x);

        double flopsFwd = 4.0 * b * hq * ((double)t * t / 2) * d;
        double Tflops(double flops, double ms) => ms > 0 ? Math.Round(flops / (ms * 1e9), 1) : 0;
        var errors = new List<string>();
        var refusedGraphs = new List<string>();
        var otherEngines = new List<object>();
        var refusals = new Dictionary<string, List<string>>();
        var engines = new Dictionary<string, object>();
        var rel = new Dictionary<string, double>();
        var repeat = new Dictionary<string, bool>(); // a second call's outputs the same bits as the first's
        object? deterministic = null;

        // FineTune's flash kernels: the reference outputs and the times to beat.
        gpu.Attention(o, lse, q, k, v, seg, s);
        double flashFwd = Profile(gpu, () => gpu.Attention(o, lse, q, k, v, seg, s));
        gpu.AttentionBackward(dq, dk, dv, dout, o, lse, q, k, v, seg, s);
        double flashBwd = Profile(gpu, () => gpu.AttentionBackward(dq, dk, dv, dout, o, lse, q, k, v, seg, s));

        double dnnFwd = 0, dnnBwd = 0;
        bool forwardRan = Try("forward", () =>
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var (plan, opt) = FirstPlan("forward", backward: false);
            engines["forward"] = new { graph = opt.ToString(), engine = plan.Engine, workspace_bytes = plan.WorkspaceBytes, build_s = Math.Round(clock.Elapsed.TotalSeconds, 2) };
            if (plan.Refusals.Count > 0) refusals["forward"] = plan.Refusals;
            dnn.Forward(P(o2), P(lse2), P(q), P(k), P(v), ss, opt);
            gpu.Synchronize();
            dnnFwd = Profile(gpu, () => dnn.Forward(P(o2), P(lse2), P(q), P(k), P(v), ss, opt));
            rel["o"] = Rel(Download(gpu, o2), Download(gpu, o));
            var firstO = Download(gpu, o2);
            dnn.Forward(P(o2), P(lse2), P(q), P(k), P(v), ss, opt);
            repeat["forward"] = Download(gpu, o2).AsSpan().SequenceEqual(firstO);
            rel["lse"] = Rel(Download(gpu, lse2), Download(gpu, lse));
            OtherEngines("forward", false, opt, flopsFwd, x => dnn.Forward(P(o2), P(lse2), P(q), P(k), P(v), ss, x), () => Rel(Download(gpu, o2), Download(gpu, o)));
        });
        // The backward takes FineTune's forward outputs, so it is checked even when cuDNN's forward was refused.
        Try("backward", () =>
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var (plan, opt) = FirstPlan("backward", backward: true);
            engines["backward"] = new { graph = opt.ToString(), engine = plan.Engine, workspace_bytes = plan.WorkspaceBytes, build_s = Math.Round(clock.Elapsed.TotalSeconds, 2) };
            if (plan.Refusals.Count > 0) refusals["backward"] = plan.Refusals;
            void Backward() => dnn.Backward(P(dq2), P(dk2), P(dv2), P(dout), P(o), P(lse), P(q), P(k), P(v), ss, opt);
            Backward();
            gpu.Synchronize();
            dnnBwd = Profile(gpu, Backward);
            rel["dq"] = Rel(Download(gpu, dq2), Download(gpu, dq));
            rel["dk"] = Rel(Download(gpu, dk2), Download(gpu, dk));
            rel["dv"] = Rel(Download(gpu, dv2), Download(gpu, dv));
            var firstBits = new[] { dq2, dk2, dv2 }.Select(x => Download(gpu, x)).ToArray();
            Backward();
            repeat["backward"] = new[] { dq2, dk2, dv2 }.Select((x, i) => Download(gpu, x).AsSpan().SequenceEqual(firstBits[i])).All(e => e);
            // The form without atomic additions (dQ straight from the matmul; cuDNN's dP-workspace engine).
            var det = opt with { DeterministicDq = true };
            try
            {
                var dplan = dnn.Plan(ss, true, det);
                void Det() => dnn.Backward(P(dq2), P(dk2), P(dv2), P(dout), P(o), P(lse), P(q), P(k), P(v), ss, det);
                Det();
                gpu.Synchronize();
                double ms = Profile(gpu, Det);
                var dRel = new[] { (dq2, dq), (dk2, dk), (dv2, dv) }.Select(p => Rel(Download(gpu, p.Item1), Download(gpu, p.Item2))).ToArray();
                var bits = new[] { dq2, dk2, dv2 }.Select(x => Download(gpu, x)).ToArray();
                Det();
                bool same = new[] { dq2, dk2, dv2 }.Select((x, i) => Download(gpu, x).AsSpan().SequenceEqual(bits[i])).All(e => e);
                deterministic = new { engine = dplan.Engine, workspace_bytes = dnn.BackwardWorkspaceBytes(ss, det), ms = Math.Round(ms, 3),
                    tflops = Tflops(2.5 * flopsFwd, ms), rel_dq = dRel[0], rel_dk = dRel[1], rel_dv = dRel[2], bit_repeat = same };
                if (!same || dRel.Any(r => !(r <= Tolerance))) errors.Add("deterministic backward: bits differ run to run or outside the tolerance");
            }
            catch (CudaException e) { deterministic = new { error = e.Message }; }
            OtherEngines("backward", true, opt, 2.5 * flopsFwd, x => dnn.Backward(P(dq2), P(dk2), P(dv2), P(dout), P(o), P(lse), P(q), P(k), P(v), ss, x),
                () => Rel(Download(gpu, dq2), Download(gpu, dq)));
        });
        foreach (var x in made) x.Buffer.Dispose();

        bool pass = errors.Count == 0 && rel.Count == 5 && rel.Values.All(r => r <= Tolerance);
        var row = new
        {
            shape = name, batch = b, seq = t, heads = $"{hq}/{hkv}", head_dim = d, pass, forward_ran = forwardRan,
            rel_l2 = rel, tolerance = Tolerance, bit_repeat = repeat, deterministic_backward = deterministic, engines, refusals, refused_graphs = refusedGraphs, other_engines = otherEngines, errors,
            flash = new { forward_ms = Math.Round(flashFwd, 3), backward_ms = Math.Round(flashBwd, 3), forward_tflops = Tflops(flopsFwd, flashFwd), backward_tflops = Tflops(2.5 * flopsFwd, flashBwd) },
            cudnn = new { forward_ms = Math.Round(dnnFwd, 3), backward_ms = Math.Round(dnnBwd, 3), forward_tflops = Tflops(flopsFwd, dnnFwd), backward_tflops = Tflops(2.5 * flopsFwd, dnnBwd) },
        };
        return (row, pass);

        // With FINETUNE_CUDNN_ENGINES=n, the next n engine configurations that finalize, each timed and checked
        // (rel: O's or dQ's relative L2) — whether the heuristics' first choice is the fastest.
        void OtherEngines(string direction, bool backward, SdpaGraphOptions opt, double flops, Action<SdpaGraphOptions> run, Func<double> relError)
        {
            for (int e = 1; e <= otherEngineCount; e++)
            {
                var alt = opt with { Engine = e };
                try
                {
                    var plan = dnn.Plan(ss, backward, alt);
                    run(alt);
                    gpu.Synchronize();
                    double ms = Profile(gpu, () => run(alt));
                    otherEngines.Add(new { direction, engine = plan.Engine, ms = Math.Round(ms, 3), tflops = Tflops(flops, ms), rel = relError() });
                }
                catch (CudaException ex)
                {
                    otherEngines.Add(new { direction, choice = e, error = ex.Message });
                    break;
                }
            }
        }

        // The plan of the first graph variant cuDNN accepts (SdpaGraphOptions.Alternatives, the default first); each
        // refused variant's error goes to the row's refused_graphs, and its graph is printed (once per direction).
        (CudnnPlan, SdpaGraphOptions) FirstPlan(string direction, bool backward)
        {
            foreach (var opt in SdpaGraphOptions.Alternatives)
            {
                try { return (dnn.Plan(ss, backward, opt), opt); }
                catch (CudnnException e)
                {
                    refusedGraphs.Add($"{direction} ({opt}): {e.Message}");
                    Console.Error.WriteLine($"[cudnn {name} {direction} ({opt})] {e.Message}");
                    if (described.Add(direction))
                    {
                        var graph = backward ? CudnnSdpaGraphs.Backward(ss, dnn.Library.Version, opt) : CudnnSdpaGraphs.Forward(ss, dnn.Library.Version, opt);
                        Console.Error.WriteLine($"[cudnn {name} {direction}] the graph sent:\n{graph.Describe()}");
                    }
                }
            }
            throw new CudnnException($"{direction}: cuDNN refused every graph variant", 3000);
        }

        bool Try(string direction, Action work)
        {
            try { work(); return true; }
            catch (Exception e) when (e is CudaException or ArgumentException)
            {
                // A failed launch can leave the stream in error; later cases then fail too, which the log shows.
                errors.Add($"{direction}: {e.Message}");
                Console.Error.WriteLine($"[cudnn {name} {direction}] {e.Message}");
                return false;
            }
        }
    }

    // Device milliseconds per call: everything queued in the 5 calls, over 5.
    static double Profile(CudaBackend gpu, Action work) => FlashBench.Profile(gpu, work).Values.Sum();

    static float[] Download(CudaBackend gpu, Tensor x) => FlashBench.Download(gpu, x);

    static double Rel(float[] a, float[] r) => FlashBench.Rel(a, r);
}
