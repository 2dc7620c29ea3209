namespace FineTune.Engine.Collectives;

/// <summary>
/// How a collective combines the ranks' values: their sum, their mean (the sum divided by the world size), or their
/// element-wise maximum (FP8 delayed scaling's amaxes: every rank takes the largest any rank measured).
/// </summary>
public enum ReduceOp { Sum, Average, Max }

/// <summary>
/// The collective operations data-parallel and sharded training need, over tensors (F32 or BF16) of one backend, between
/// the <see cref="WorldSize"/> processes of a job. Every rank calls the same operations in the same order with tensors of
/// the same lengths; each call names what the trainer was doing (<c>activity</c>), so that when a peer dies or hangs every
/// rank fails with a message that says which rank and during what, instead of waiting for ever.
/// Implementations: <see cref="TcpCollective"/> (CPU ranks over loopback or a network, deterministic reduction order) and
/// <see cref="NcclCollective"/> (NCCL on the CUDA backend's stream).
/// </summary>
public interface ICollective : IDisposable
{
    int Rank { get; }
    int WorldSize { get; }
    /// <summary>"tcp" or "nccl".</summary>
    string Name { get; }

    /// <summary>buffer ← Σ over ranks (the mean, or the element-wise maximum) of every rank's buffer, on every rank.</summary>
    void AllReduce(Tensor buffer, ReduceOp op, string activity);

    /// <summary>
    /// input is WorldSize equal segments; rank r's output ← Σ over ranks (the mean, or the maximum) of every rank's segment r.
    /// </summary>
    void ReduceScatter(Tensor input, Tensor output, ReduceOp op, string activity);

    /// <summary>output (WorldSize × input's length) ← every rank's input, in rank order, on every rank.</summary>
    void AllGather(Tensor input, Tensor output, string activity);

    /// <summary>buffer ← rank <paramref name="root"/>'s buffer, on every rank.</summary>
    void Broadcast(Tensor buffer, int root, string activity);

    /// <summary>Returns when every rank has reached it.</summary>
    void Barrier(string activity);

    /// <summary>
    /// values ← the sum over ranks, in rank order (so every rank and every run gets the same bits), for host numbers:
    /// token counts, summed losses.
    /// </summary>
    void AllReduceHost(Span<double> values, string activity);

    /// <summary>
    /// Waits until the collectives queued so far have finished (NCCL runs them on the stream; its errors and the time
    /// limit are checked here); the TCP collective is synchronous and returns at once.
    /// </summary>
    void Wait(string activity) { }

    /// <summary>
    /// True when every call returns only once its values are there (TCP); false when calls queue work and
    /// <see cref="Wait"/> completes it (NCCL on the stream). Data parallel overlaps a synchronous collective with the
    /// backward on a worker thread, and enqueues an asynchronous one from the backward itself.
    /// </summary>
    bool Synchronous => true;
}

/// <summary>
/// A collective failed: a peer closed its connection (died or was killed), did not answer within the time limit, called
/// another operation, or NCCL reported an error. The message names this rank, the peer and the activity.
/// </summary>
public sealed class CollectiveException(string message, Exception? inner = null) : Exception(message, inner);
