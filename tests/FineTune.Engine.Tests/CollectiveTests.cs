using System.Net;
using System.Net.Sockets;
using FineTune.Engine.Collectives;
using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>The TCP collective: N ranks as threads of this process, each with its own CPU backend, over real loopback sockets.</summary>
public sealed class CollectiveTests
{
    static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>Runs <paramref name="body"/> on <paramref name="world"/> ranks at once; returns each rank's result or exception.</summary>
    static (T? Result, Exception? Error)[] OnRanks<T>(int world, Func<TcpCollective, CpuBackend, T> body, double timeoutSeconds = 20)
    {
        int port = FreePort();
        var results = new (T?, Exception?)[world];
        var threads = Enumerable.Range(0, world).Select(rank => new Thread(() =>
        {
            using var backend = new CpuBackend(threads: 1);
            try
            {
                using var group = TcpCollective.Connect(new Rendezvous("127.0.0.1", port, rank, world, rank, world), TimeSpan.FromSeconds(timeoutSeconds));
                results[rank] = (body(group, backend), null);
            }
            catch (Exception e) { results[rank] = (default, e); }
        })).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromSeconds(60)), "a rank hung");
        return results;
    }

    static T[] Values<T>((T? Result, Exception? Error)[] results) =>
        results.Select(r => r.Error is null ? r.Result! : throw new Xunit.Sdk.XunitException(r.Error.ToString())).ToArray();

    [Fact]
    public void All_reduce_sums_and_averages_over_three_ranks()
    {
        var results = Values(OnRanks(3, (g, b) =>
        {
            var sum = b.F32([g.Rank + 1f, 10f * g.Rank, 0.5f], 3);
            g.AllReduce(sum, ReduceOp.Sum, "test");
            var mean = b.F32([g.Rank * 3f, 1f], 2);
            g.AllReduce(mean, ReduceOp.Average, "test");
            return (b.Read(sum), b.Read(mean));
        }));
        foreach (var (sum, mean) in results)
        {
            Assert.Equal([6f, 30f, 1.5f], sum);
            Assert.Equal([3f, 1f], mean);
        }
    }

    [Fact]
    public void Reduce_scatter_gives_each_rank_the_sum_of_its_segment()
    {
        var results = Values(OnRanks(2, (g, b) =>
        {
            // rank 0: [1 2 | 3 4], rank 1: [10 20 | 30 40]
            float s = g.Rank == 0 ? 1 : 10;
            var input = b.F32([s, 2 * s, 3 * s, 4 * s], 4);
            var output = b.F32([0f, 0f], 2);
            g.ReduceScatter(input, output, ReduceOp.Sum, "test");
            return b.Read(output);
        }));
        Assert.Equal([11f, 22f], results[0]);
        Assert.Equal([33f, 44f], results[1]);
    }

    [Fact]
    public void All_gather_concatenates_in_rank_order_and_broadcast_copies_the_root()
    {
        var results = Values(OnRanks(3, (g, b) =>
        {
            var input = b.F32([g.Rank, g.Rank + 0.25f], 2);
            var output = b.F32(new float[6], 6);
            g.AllGather(input, output, "test");
            var root = b.F32([g.Rank * 7f, -g.Rank], 2);
            g.Broadcast(root, 2, "test");
            Span<double> host = [g.Rank + 0.5, 1];
            g.AllReduceHost(host, "test");
            return (b.Read(output), b.Read(root), host.ToArray());
        }));
        foreach (var (gathered, root, host) in results)
        {
            Assert.Equal([0f, 0.25f, 1f, 1.25f, 2f, 2.25f], gathered);
            Assert.Equal([14f, -2f], root);
            Assert.Equal([4.5, 3.0], host);
        }
    }

    [Fact]
    public void All_reduce_max_gives_every_rank_each_elements_largest_value_bit_for_bit()
    {
        // Per element over the three ranks: mixed signs, +0 against −0 (IEEE maximum: +0), a subnormal (an I32 push count
        // 5 in an F32's bits) against a smaller one, equal values, the largest finite float. No NaN anywhere.
        float count5 = BitConverter.Int32BitsToSingle(5), count3 = BitConverter.Int32BitsToSingle(3);
        float[][] rows =
        [
            [1.5f, -2f, -0f, count5, 7f, float.MaxValue],
            [0.25f, -1f, 0f, count3, 7f, 1f],
            [3f, -8f, -0f, count5, 7f, -float.MaxValue],
        ];
        float[] expected = [3f, -1f, 0f, count5, 7f, float.MaxValue];
        // Every arrangement of the rows over the ranks gives the same bits.
        int[][] orders = [[0, 1, 2], [2, 0, 1], [1, 2, 0], [2, 1, 0]];
        foreach (var order in orders)
        {
            var results = Values(OnRanks(3, (g, b) =>
            {
                var t = b.F32(rows[order[g.Rank]], 6);
                g.AllReduce(t, ReduceOp.Max, "test");
                return b.Read(t);
            }));
            foreach (var r in results)
            {
                Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), r.Select(BitConverter.SingleToInt32Bits));
                Assert.DoesNotContain(r, float.IsNaN);
            }
        }
    }

    [Fact]
    public void Reduce_scatter_max_gives_each_rank_the_maximum_of_its_segment()
    {
        var results = Values(OnRanks(2, (g, b) =>
        {
            // rank 0: [1 20 | 3 −4], rank 1: [10 2 | −30 −40]
            float[] values = g.Rank == 0 ? [1f, 20f, 3f, -4f] : [10f, 2f, -30f, -40f];
            var input = b.F32(values, 4);
            var output = b.F32([0f, 0f], 2);
            g.ReduceScatter(input, output, ReduceOp.Max, "test");
            return b.Read(output);
        }));
        Assert.Equal([10f, 20f], results[0]);
        Assert.Equal([3f, -4f], results[1]);
    }

    [Fact]
    public void A_rank_taking_the_maximum_while_another_sums_fails_at_once()
    {
        var results = OnRanks(2, (g, b) =>
        {
            var t = b.F32([1f, 2f], 2);
            g.AllReduce(t, g.Rank == 0 ? ReduceOp.Sum : ReduceOp.Max, "step 4");
            return 0;
        });
        var e = Assert.IsType<CollectiveException>(results[0].Error);
        Assert.Equal("rank 0: rank 1 called max all-reduce (collective #2) while this rank called all-reduce (collective #2) during step 4; the ranks ran different code paths.", e.Message);
        Assert.IsType<CollectiveException>(results[1].Error);
    }

    [Fact]
    public void Reduction_order_is_fixed_so_runs_give_the_same_bits()
    {
        // Values whose float sum depends on the order: ((1e8 + 1) + −1e8) = 0 in F32, (1e8 + −1e8) + 1 = 1.
        float[] Run() => Values(OnRanks(3, (g, b) =>
        {
            var t = b.F32([g.Rank switch { 0 => 1e8f, 1 => 1f, _ => -1e8f }], 1);
            g.AllReduce(t, ReduceOp.Sum, "test");
            return b.Read(t)[0];
        })).Distinct().ToArray();
        for (int run = 0; run < 3; run++) Assert.Equal([0f], Run());
    }

    [Fact]
    public void A_rank_that_closes_makes_every_other_rank_fail_naming_it()
    {
        var results = OnRanks(3, (g, b) =>
        {
            if (g.Rank == 1) { g.Dispose(); return 0; }
            var t = b.F32([1f], 1);
            g.AllReduce(t, ReduceOp.Sum, "the gradient all-reduce of step 7");
            return 1;
        });
        var rank0 = Assert.IsType<CollectiveException>(results[0].Error);
        Assert.Equal("rank 0: rank 1 closed its connection during the gradient all-reduce of step 7 (it exited, crashed or was killed; its own output says why); stopping this rank.", rank0.Message);
        var rank2 = Assert.IsType<CollectiveException>(results[2].Error);
        Assert.StartsWith("rank 2: rank 0 closed its connection during the gradient all-reduce of step 7", rank2.Message);
    }

    [Fact]
    public void A_rank_that_hangs_ends_the_others_at_the_time_limit()
    {
        var release = new ManualResetEventSlim();
        var results = OnRanks(2, (g, b) =>
        {
            if (g.Rank == 1) { release.Wait(TimeSpan.FromSeconds(30)); return 0; }
            try
            {
                g.Barrier("the loss of step 3");
                return 1;
            }
            finally { release.Set(); }
        }, timeoutSeconds: 1);
        var e = Assert.IsType<CollectiveException>(results[0].Error);
        Assert.Equal("rank 0: rank 1 did not answer within 1 s during the loss of step 3 (it hangs or is far behind); stopping this rank. Raise FINETUNE_DDP_TIMEOUT (seconds) if a step legitimately takes longer.", e.Message);
    }

    [Fact]
    public void Ranks_calling_different_operations_fail_at_once()
    {
        var results = OnRanks(2, (g, b) =>
        {
            var t = b.F32([1f, 2f], 2);
            if (g.Rank == 0) g.AllReduce(t, ReduceOp.Sum, "step 1");
            else g.Broadcast(t, 0, "step 1");
            return 0;
        });
        var e = Assert.IsType<CollectiveException>(results[0].Error);
        Assert.Equal("rank 0: rank 1 called broadcast (collective #2) while this rank called all-reduce (collective #2) during step 1; the ranks ran different code paths.", e.Message);
        Assert.IsType<CollectiveException>(results[1].Error);
    }

    [Fact]
    public void A_rank_that_cannot_reach_rank_0_says_where_it_looked()
    {
        int port = FreePort();
        var e = Assert.Throws<CollectiveException>(() => TcpCollective.Connect(new Rendezvous("127.0.0.1", port, 1, 2, 1, 2), TimeSpan.FromSeconds(0.3)));
        Assert.StartsWith($"rank 1: could not reach rank 0 at 127.0.0.1:{port} within 0 s", e.Message);
    }

    [Fact]
    public void Rendezvous_reads_torchruns_variables()
    {
        var env = new Dictionary<string, string> { ["MASTER_ADDR"] = "10.0.0.5", ["MASTER_PORT"] = "29501", ["RANK"] = "3", ["WORLD_SIZE"] = "4", ["LOCAL_RANK"] = "1", ["LOCAL_WORLD_SIZE"] = "2" };
        Assert.Equal(new Rendezvous("10.0.0.5", 29501, 3, 4, 1, 2), Rendezvous.FromEnvironment(env.GetValueOrDefault));
        Assert.Null(Rendezvous.FromEnvironment(_ => null));
        env["RANK"] = "4";
        Assert.Equal("RANK=4 is not an integer in [0, 3].", Assert.Throws<CollectiveException>(() => Rendezvous.FromEnvironment(env.GetValueOrDefault)).Message);
        env.Remove("MASTER_ADDR");
        env["RANK"] = "0";
        Assert.Equal("WORLD_SIZE=4, but MASTER_ADDR is not set; set it to the host of rank 0.", Assert.Throws<CollectiveException>(() => Rendezvous.FromEnvironment(env.GetValueOrDefault)).Message);
    }
}
