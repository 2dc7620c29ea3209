using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace FineTune.Engine.Collectives;

/// <summary>
/// Collectives between processes over TCP, for CPU ranks (CI, tests, small models) and as the control channel beside
/// NCCL (its unique id, host numbers, the launcher's job messages). Rank 0 listens on MASTER_ADDR:MASTER_PORT and every
/// other rank connects to it: a tree of depth one. Each operation sends every rank's frame to rank 0, which combines them
/// in rank order 0, 1, …, N−1 (a fixed order, so N ranks give bit-identical results run to run) and sends each rank its
/// result. Every frame carries the operation and its sequence number, so ranks that call different operations fail at
/// once, naming both. Each receive waits at most the time limit; a peer that closed its socket (it exited, crashed or was
/// killed) or did not answer in time makes this rank throw <see cref="CollectiveException"/> and close its own sockets,
/// which the other ranks then see at their next operation: every rank exits, none hangs.
/// </summary>
public sealed class TcpCollective : ICollective
{
    const int Magic = 0x4C435446; // "FTCL"
    const int HeaderBytes = 16;

    enum Op
    {
        Hello = 1, AllReduceSum, AllReduceAverage, ReduceScatterSum, ReduceScatterAverage, AllGather, Broadcast, Barrier,
        HostSum, Bytes, AllReduceMax, ReduceScatterMax,
    }

    readonly Socket?[] _peers;
    readonly TimeSpan _timeout;
    int _sequence;
    string? _broken;

    public int Rank { get; }
    public int WorldSize { get; }
    public string Name => "tcp";
    public TimeSpan Timeout => _timeout;

    TcpCollective(int rank, int worldSize, Socket?[] peers, TimeSpan timeout)
    {
        Rank = rank;
        WorldSize = worldSize;
        _peers = peers;
        _timeout = timeout;
    }

    /// <summary>
    /// Forms the group: rank 0 listens and waits for the other ranks (each says its rank and the world size it was
    /// started with); the others connect, retrying while rank 0 is not up yet. Both wait at most <paramref name="timeout"/>.
    /// </summary>
    public static TcpCollective Connect(Rendezvous rv, TimeSpan timeout)
    {
        if (rv.WorldSize == 1) return new TcpCollective(0, 1, [], timeout);
        var deadline = Stopwatch.StartNew();
        return rv.Rank == 0 ? Listen(rv, timeout, deadline) : Join(rv, timeout, deadline);
    }

    static TcpCollective Listen(Rendezvous rv, TimeSpan timeout, Stopwatch clock)
    {
        var peers = new Socket?[rv.WorldSize];
        bool loopback = IPAddress.TryParse(rv.MasterAddr, out var ip) ? IPAddress.IsLoopback(ip) : rv.MasterAddr == "localhost";
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        try
        {
            listener.Bind(new IPEndPoint(loopback ? IPAddress.Loopback : IPAddress.Any, rv.MasterPort));
            listener.Listen(rv.WorldSize);
        }
        catch (SocketException e)
        {
            throw new CollectiveException($"rank 0 could not listen on port {rv.MasterPort} ({e.Message}); set MASTER_PORT to a free port (or `--master-port`).", e);
        }
        try
        {
            for (int joined = 1; joined < rv.WorldSize; joined++)
            {
                var left = timeout - clock.Elapsed;
                var accept = listener.AcceptAsync();
                if (left <= TimeSpan.Zero || !accept.Wait(left))
                {
                    var missing = Enumerable.Range(1, rv.WorldSize - 1).Where(r => peers[r] is null);
                    throw new CollectiveException($"rank 0: rank(s) {string.Join(", ", missing)} did not join within {timeout.TotalSeconds:0} s at {rv.MasterAddr}:{rv.MasterPort}; start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE={rv.WorldSize}.");
                }
                var s = accept.Result;
                Configure(s, timeout);
                var header = new byte[HeaderBytes + 8];
                ReceiveExactly(s, header, 0, -1, "the rendezvous", timeout);
                var (op, peerRank, length) = ParseHeader(header);
                int magic = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(HeaderBytes)), world = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(HeaderBytes + 4));
                if (op != Op.Hello || magic != Magic || length != 8)
                    throw new CollectiveException($"rank 0: a connection to {rv.MasterAddr}:{rv.MasterPort} is not a FineTune rank; pick another MASTER_PORT.");
                if (world != rv.WorldSize)
                    throw new CollectiveException($"rank 0: rank {peerRank} was started with WORLD_SIZE={world}, rank 0 with {rv.WorldSize}; start every rank with the same WORLD_SIZE.");
                if (peerRank < 1 || peerRank >= rv.WorldSize || peers[peerRank] is not null)
                    throw new CollectiveException($"rank 0: two processes joined as rank {peerRank}; give every process its own RANK in 0…{rv.WorldSize - 1}.");
                peers[peerRank] = s;
            }
            var group = new TcpCollective(0, rv.WorldSize, peers, timeout);
            group.Barrier("the rendezvous");
            return group;
        }
        catch
        {
            foreach (var p in peers) p?.Dispose();
            throw;
        }
    }

    static TcpCollective Join(Rendezvous rv, TimeSpan timeout, Stopwatch clock)
    {
        Exception? last = null;
        while (clock.Elapsed < timeout)
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                s.Connect(rv.MasterAddr, rv.MasterPort);
            }
            catch (SocketException e)
            {
                s.Dispose();
                last = e;
                Thread.Sleep(50);
                continue;
            }
            Configure(s, timeout);
            var hello = new byte[HeaderBytes + 8];
            WriteHeader(hello, Op.Hello, rv.Rank, 8);
            BinaryPrimitives.WriteInt32LittleEndian(hello.AsSpan(HeaderBytes), Magic);
            BinaryPrimitives.WriteInt32LittleEndian(hello.AsSpan(HeaderBytes + 4), rv.WorldSize);
            var peers = new Socket?[1] { s };
            var group = new TcpCollective(rv.Rank, rv.WorldSize, peers, timeout);
            try
            {
                group.SendAll(s, hello, 0, "the rendezvous");
                group.Barrier("the rendezvous");
            }
            catch
            {
                group.Dispose();
                throw;
            }
            return group;
        }
        throw new CollectiveException($"rank {rv.Rank}: could not reach rank 0 at {rv.MasterAddr}:{rv.MasterPort} within {timeout.TotalSeconds:0} s ({last?.Message}); is rank 0 running, and are MASTER_ADDR and MASTER_PORT the same for every rank?", last);
    }

    static void Configure(Socket s, TimeSpan timeout)
    {
        s.NoDelay = true;
        s.ReceiveTimeout = TimeoutMilliseconds(timeout);
        s.SendTimeout = TimeoutMilliseconds(timeout);
    }

    static int TimeoutMilliseconds(TimeSpan t) => t == System.Threading.Timeout.InfiniteTimeSpan ? 0 : (int)Math.Clamp(t.TotalMilliseconds, 1, int.MaxValue);

    // ---- the operations ----

    public void AllReduce(Tensor buffer, ReduceOp op, string activity)
    {
        var values = Download(buffer);
        var result = Exchange(op switch { ReduceOp.Sum => Op.AllReduceSum, ReduceOp.Average => Op.AllReduceAverage, _ => Op.AllReduceMax }, Bytes(values), all =>
        {
            var sum = Combine(all, op);
            return Enumerable.Repeat(sum, all.Length).ToArray();
        }, activity);
        buffer.Backend.Upload(buffer, MemoryMarshal.Cast<byte, float>(result));
    }

    public void ReduceScatter(Tensor input, Tensor output, ReduceOp op, string activity)
    {
        if (input.Length != output.Length * WorldSize)
            throw new ArgumentException($"reduce-scatter: input of {input.Length} values is not {WorldSize} segments of the output's {output.Length}");
        var values = Download(input);
        int segmentBytes = checked((int)output.Length * 4);
        var result = Exchange(op switch { ReduceOp.Sum => Op.ReduceScatterSum, ReduceOp.Average => Op.ReduceScatterAverage, _ => Op.ReduceScatterMax }, Bytes(values), all =>
        {
            var sum = Combine(all, op);
            return Enumerable.Range(0, all.Length).Select(r => sum.AsSpan(r * segmentBytes, segmentBytes).ToArray()).ToArray();
        }, activity);
        output.Backend.Upload(output, MemoryMarshal.Cast<byte, float>(result));
    }

    public void AllGather(Tensor input, Tensor output, string activity)
    {
        if (output.Length != input.Length * WorldSize)
            throw new ArgumentException($"all-gather: output of {output.Length} values is not {WorldSize} × the input's {input.Length}");
        var result = Exchange(Op.AllGather, Bytes(Download(input)), all =>
        {
            var joined = all.SelectMany(a => a).ToArray();
            return Enumerable.Repeat(joined, all.Length).ToArray();
        }, activity);
        output.Backend.Upload(output, MemoryMarshal.Cast<byte, float>(result));
    }

    public void Broadcast(Tensor buffer, int root, string activity)
    {
        if ((uint)root >= (uint)WorldSize) throw new ArgumentOutOfRangeException(nameof(root), root, $"no rank {root} in a world of {WorldSize}");
        // Only the root's frame carries values; the others send an empty frame, which keeps the sequence check.
        byte[] own = Rank == root ? Bytes(Download(buffer)) : [];
        var result = Exchange(Op.Broadcast, own, all =>
        {
            if (all[root].Length != buffer.Length * 4)
                throw new CollectiveException($"rank 0: rank {root} broadcast {all[root].Length / 4} values during {activity}, this rank expected {buffer.Length}.");
            return Enumerable.Repeat(all[root], all.Length).ToArray();
        }, activity);
        if (Rank != root) buffer.Backend.Upload(buffer, MemoryMarshal.Cast<byte, float>(result));
    }

    public void Barrier(string activity) => Exchange(Op.Barrier, [], all => all.Select(_ => Array.Empty<byte>()).ToArray(), activity);

    public void AllReduceHost(Span<double> values, string activity)
    {
        var result = Exchange(Op.HostSum, MemoryMarshal.AsBytes(values).ToArray(), all =>
        {
            var sum = new double[all[0].Length / 8];
            foreach (var a in all)
            {
                var d = MemoryMarshal.Cast<byte, double>(a);
                if (d.Length != sum.Length) throw new CollectiveException($"rank 0: the ranks summed host values of different lengths during {activity}.");
                for (int i = 0; i < sum.Length; i++) sum[i] += d[i];
            }
            var bytes = MemoryMarshal.AsBytes(sum.AsSpan()).ToArray();
            return Enumerable.Repeat(bytes, all.Length).ToArray();
        }, activity);
        MemoryMarshal.Cast<byte, double>(result).CopyTo(values);
    }

    /// <summary>
    /// Rank 0's <paramref name="payload"/> on every rank (the others pass none). <paramref name="untimed"/>: the other ranks
    /// wait without a time limit (for the next job, which rank 0 sends after the stages before it), still failing at once
    /// when rank 0's connection closes.
    /// </summary>
    public byte[] BroadcastBytes(byte[]? payload, string activity, bool untimed = false)
    {
        if (Rank == 0 && payload is null) throw new ArgumentNullException(nameof(payload), "rank 0 broadcasts a payload");
        if (WorldSize == 1) return payload!;
        return Exchange(Op.Bytes, Rank == 0 ? payload! : [], all => Enumerable.Repeat(all[0], all.Length).ToArray(), activity, untimed);
    }

    // ---- frames ----

    /// <summary>
    /// One round: every rank's frame to rank 0, <paramref name="combine"/> there (payloads indexed by rank), each rank's
    /// result back. Returns this rank's result.
    /// </summary>
    byte[] Exchange(Op op, byte[] own, Func<byte[][], byte[][]> combine, string activity, bool untimed = false)
    {
        if (_broken is not null) throw new CollectiveException($"rank {Rank}: the group already failed ({_broken}); {activity} cannot run.");
        int seq = ++_sequence;
        if (WorldSize == 1) return combine([own])[0];
        try
        {
            if (Rank != 0)
            {
                var s = _peers[0]!;
                SendFrame(s, op, seq, own, 0, activity);
                if (untimed) s.ReceiveTimeout = 0;
                try { return ReceiveFrame(s, op, seq, 0, activity); }
                finally { if (untimed) s.ReceiveTimeout = TimeoutMilliseconds(_timeout); }
            }
            var all = new byte[WorldSize][];
            all[0] = own;
            for (int r = 1; r < WorldSize; r++) all[r] = ReceiveFrame(_peers[r]!, op, seq, r, activity);
            var results = combine(all);
            for (int r = 1; r < WorldSize; r++) SendFrame(_peers[r]!, op, seq, results[r], r, activity);
            return results[0];
        }
        catch (CollectiveException e)
        {
            Fail(e.Message);
            throw;
        }
    }

    /// <summary>Marks the group failed and closes every socket, so that every other rank sees it at its next operation.</summary>
    void Fail(string why)
    {
        _broken ??= why;
        foreach (var p in _peers) p?.Dispose();
    }

    void SendFrame(Socket s, Op op, int seq, byte[] payload, int peer, string activity)
    {
        var header = new byte[HeaderBytes];
        WriteHeader(header, op, seq, payload.Length);
        SendAll(s, header, peer, activity);
        SendAll(s, payload, peer, activity);
    }

    byte[] ReceiveFrame(Socket s, Op op, int seq, int peer, string activity)
    {
        var header = new byte[HeaderBytes];
        ReceiveExactly(s, header, Rank, peer, activity, _timeout);
        var (peerOp, peerSeq, length) = ParseHeader(header);
        if (peerOp != op || peerSeq != seq)
            throw new CollectiveException($"rank {Rank}: rank {peer} called {Describe(peerOp)} (collective #{peerSeq}) while this rank called {Describe(op)} (collective #{seq}) during {activity}; the ranks ran different code paths.");
        if (length < 0 || length > int.MaxValue) throw new CollectiveException($"rank {Rank}: rank {peer} sent a frame of {length} bytes during {activity}.");
        var payload = new byte[length];
        ReceiveExactly(s, payload, Rank, peer, activity, _timeout);
        return payload;
    }

    static string Describe(Op op) => op switch
    {
        Op.AllReduceSum or Op.AllReduceAverage => "all-reduce",
        Op.AllReduceMax => "max all-reduce",
        Op.ReduceScatterSum or Op.ReduceScatterAverage => "reduce-scatter",
        Op.ReduceScatterMax => "max reduce-scatter",
        Op.AllGather => "all-gather",
        Op.Broadcast or Op.Bytes => "broadcast",
        Op.Barrier => "barrier",
        Op.HostSum => "host all-reduce",
        _ => op.ToString(),
    };

    void SendAll(Socket s, byte[] data, int peer, string activity)
    {
        try
        {
            int sent = 0;
            while (sent < data.Length) sent += s.Send(data, sent, data.Length - sent, SocketFlags.None);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            throw Lost(Rank, peer, activity, e, _timeout);
        }
    }

    static void ReceiveExactly(Socket s, byte[] data, int me, int peer, string activity, TimeSpan timeout)
    {
        int read = 0;
        try
        {
            while (read < data.Length)
            {
                int n = s.Receive(data, read, data.Length - read, SocketFlags.None);
                if (n == 0) throw Lost(me, peer, activity, null, timeout);
                read += n;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            throw Lost(me, peer, activity, e, timeout);
        }
    }

    static CollectiveException Lost(int me, int peer, string activity, Exception? e, TimeSpan timeout)
    {
        string who = me < 0 ? "rank 0: a joining rank" : $"rank {me}: rank {(peer < 0 ? "?" : peer.ToString(System.Globalization.CultureInfo.InvariantCulture))}";
        return e is SocketException { SocketErrorCode: SocketError.TimedOut or SocketError.WouldBlock }
            ? new CollectiveException($"{who} did not answer within {timeout.TotalSeconds:0} s during {activity} (it hangs or is far behind); stopping this rank. Raise FINETUNE_DDP_TIMEOUT (seconds) if a step legitimately takes longer.", e)
            : new CollectiveException($"{who} closed its connection during {activity} (it exited, crashed or was killed; its own output says why); stopping this rank.", e);
    }

    static void WriteHeader(Span<byte> h, Op op, int seq, long length)
    {
        BinaryPrimitives.WriteInt32LittleEndian(h, (int)op);
        BinaryPrimitives.WriteInt32LittleEndian(h[4..], seq);
        BinaryPrimitives.WriteInt64LittleEndian(h[8..], length);
    }

    static (Op Op, int Seq, long Length) ParseHeader(ReadOnlySpan<byte> h) =>
        ((Op)BinaryPrimitives.ReadInt32LittleEndian(h), BinaryPrimitives.ReadInt32LittleEndian(h[4..]), BinaryPrimitives.ReadInt64LittleEndian(h[8..]));

    static float[] Download(Tensor t)
    {
        if (t.DType is not (DType.F32 or DType.BF16)) throw new ArgumentException($"collectives take F32 or BF16 tensors, not {t.DType} ('{t.Name}')");
        var host = new float[t.Length];
        t.Backend.Download(t, host);
        return host;
    }

    static byte[] Bytes(float[] values) => MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    /// <summary>
    /// Σ in rank order 0, 1, …, N−1 (then ÷ N for the mean), in F32 as NCCL sums; or the element-wise maximum, which is
    /// exact and the same in any rank order (IEEE 754 maximum: +0 above −0, and a NaN on any rank gives NaN).
    /// </summary>
    static byte[] Combine(byte[][] all, ReduceOp op)
    {
        var acc = MemoryMarshal.Cast<byte, float>(all[0]).ToArray();
        for (int r = 1; r < all.Length; r++)
        {
            var x = MemoryMarshal.Cast<byte, float>(all[r]);
            if (x.Length != acc.Length) throw new CollectiveException($"rank 0: rank {r} reduced {x.Length} values, rank 0 {acc.Length}.");
            if (op == ReduceOp.Max) TensorPrimitives.Max(acc, x, acc);
            else TensorPrimitives.Add(acc, x, acc);
        }
        if (op == ReduceOp.Average) TensorPrimitives.Divide(acc, all.Length, acc);
        return MemoryMarshal.AsBytes(acc.AsSpan()).ToArray();
    }

    public void Dispose()
    {
        _broken ??= "closed";
        foreach (var p in _peers) p?.Dispose();
    }
}
