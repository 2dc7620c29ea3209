using System.Diagnostics;
using FineTune.Engine;
using FineTune.Engine.Collectives;
using FineTune.Engine.Cpu;
using FineTune.Engine.Cuda;

namespace FineTune.DeviceChecks;

/// <summary>
/// NCCL through FineTune's function pointers on one GPU (world size 1; several GPUs come as another machine kind): each
/// collective on F32 and BF16 tensors, in place and out of place as DataParallel calls them, against the TCP collective of
/// world size 1 on the CPU backend. With one rank every result equals its input, so these check the bindings (argument
/// order, dtype codes, pointers, the stream, the async-error wait), not the reduction arithmetic, which the CPU tests cover;
/// tolerance 0. tests/device/nccl_world1.sh trains the demo through this path.
/// </summary>
public static class CollectiveChecks
{
    public static void Run(CpuBackend cpu, CudaBackend gpu, List<CheckRow> rows)
    {
        NcclCollective nccl;
        using var control = TcpCollective.Connect(new Rendezvous("127.0.0.1", 29500, 0, 1, 0, 1), TimeSpan.FromSeconds(60));
        try { nccl = new NcclCollective(gpu, control); }
        catch (CollectiveException e)
        {
            rows.Add(new CheckRow("nccl communicator", "f32", "init", 0, 1, 0, false, 0));
            Console.WriteLine($"FAIL nccl: {e.Message}");
            return;
        }
        using (nccl)
        {
            var buffers = new List<DeviceBuffer>();
            var rng = new Random(99);
            Tensor Alloc(IBackend b, DType t, int n)
            {
                var buf = b.AllocateBuffer((long)n * t.ByteSize());
                buffers.Add(buf);
                return new Tensor(buf, 0, t, [n]);
            }
            foreach (var (dtype, path) in new[] { (DType.F32, "f32"), (DType.BF16, "bf16") })
            {
                int n = 4099;
                var values = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
                if (dtype == DType.BF16) values = values.Select(x => Bf16.ToFloat(Bf16.FromFloat(x))).ToArray();
                void Row(string op, Action<Tensor, Tensor> gpuOp)
                {
                    var input = Alloc(gpu, dtype, n);
                    var output = Alloc(gpu, dtype, n);
                    gpu.Upload(input, values);
                    gpu.Zero(output);
                    var sw = Stopwatch.StartNew();
                    string? error = null;
                    try { gpuOp(input, output); nccl.Wait(op); }
                    catch (CollectiveException e) { error = e.Message; }
                    double ms = sw.Elapsed.TotalMilliseconds;
                    var got = new float[n];
                    gpu.Download(output, got);
                    bool pass = error is null && got.SequenceEqual(values);
                    rows.Add(new CheckRow(op, path, "values", n, pass ? 0 : 1, 0, pass, ms));
                    Console.WriteLine($"{(pass ? "ok  " : "FAIL")} {path,-5} {op,-44} {"values",-12} n={n,-9} {(pass ? "equal" : error ?? "differ")} ({ms:F3} ms host)");
                }
                Row("nccl all_reduce sum (world 1)", (i, o) => { gpu.Copy(o, i); nccl.AllReduce(o, ReduceOp.Sum, "check"); });
                Row("nccl all_reduce avg (world 1)", (i, o) => { gpu.Copy(o, i); nccl.AllReduce(o, ReduceOp.Average, "check"); });
                Row("nccl all_reduce max (world 1)", (i, o) => { gpu.Copy(o, i); nccl.AllReduce(o, ReduceOp.Max, "check"); });
                Row("nccl reduce_scatter out of place (world 1)", (i, o) => nccl.ReduceScatter(i, o, ReduceOp.Sum, "check"));
                Row("nccl reduce_scatter in place (world 1)", (i, o) => { gpu.Copy(o, i); nccl.ReduceScatter(o, o.View(0, [n]), ReduceOp.Sum, "check"); });
                Row("nccl all_gather (world 1)", (i, o) => nccl.AllGather(i, o, "check"));
                Row("nccl broadcast (world 1)", (i, o) => { gpu.Copy(o, i); nccl.Broadcast(o, 0, "check"); });
            }
            {
                // An FP8 delayed-scaling arena's values through ncclMax: push counts (I32 bits, F32 subnormals), amaxes, zeros
                // keep their bits. World 1 only shows the binding; several GPUs would run NCCL's reduction kernel on them.
                float[] arena = [BitConverter.Int32BitsToSingle(1), BitConverter.Int32BitsToSingle(1023), 0.75f, 0f, 448f];
                var t = Alloc(gpu, DType.F32, arena.Length);
                gpu.Upload(t, arena);
                string? error = null;
                try { nccl.AllReduce(t, ReduceOp.Max, "check"); nccl.Wait("check"); }
                catch (CollectiveException e) { error = e.Message; }
                var got = new float[arena.Length];
                gpu.Download(t, got);
                bool pass = error is null && got.Select(BitConverter.SingleToInt32Bits).SequenceEqual(arena.Select(BitConverter.SingleToInt32Bits));
                rows.Add(new CheckRow("nccl all_reduce max, fp8 arena bits (world 1)", "f32", "bits", arena.Length, pass ? 0 : 1, 0, pass, 0));
                Console.WriteLine($"{(pass ? "ok  " : "FAIL")} f32   {"nccl all_reduce max, fp8 arena bits (world 1)",-44} {"bits",-12} n={arena.Length,-9} {(pass ? "equal" : error ?? "differ")}");
            }
            // The TCP collective of world size 1 on the CPU: the same identities, the reference path of the CPU tests.
            var cpuT = Alloc(cpu, DType.F32, 3);
            cpu.Upload(cpuT, [1f, 2f, 3f]);
            control.AllReduce(cpuT, ReduceOp.Sum, "check");
            var back = new float[3];
            cpu.Download(cpuT, back);
            bool tcp = back.SequenceEqual([1f, 2f, 3f]);
            rows.Add(new CheckRow("tcp all_reduce (world 1)", "f32", "values", 3, tcp ? 0 : 1, 0, tcp, 0));
            foreach (var b in buffers) b.Dispose();
        }
    }
}
