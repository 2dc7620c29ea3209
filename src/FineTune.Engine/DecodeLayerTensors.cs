namespace FineTune.Engine;

/// <summary>
/// Everything one decode layer of an engine step reads and writes (<see cref="IBackend.DecodeLayer"/>): the input x and
/// output y [tokens, hidden], the layer's activations, its weights and the attention's cache and step inputs. Without
/// q/k norms <see cref="Q"/> is <see cref="QIn"/> and <see cref="K"/> is <see cref="KIn"/> (rotated in place).
/// </summary>
public sealed record DecodeLayerTensors
{
    public required Tensor X { get; init; }
    public required Tensor Y { get; init; }
    public required float Eps { get; init; }

    // ln1 + q/k/v
    public required Tensor Ln1 { get; init; }
    public required Tensor Rstd1 { get; init; }
    public required Tensor InputNorm { get; init; }
    public required Tensor QIn { get; init; }
    public required Tensor KIn { get; init; }
    public required Tensor V { get; init; }
    public required Tensor QWeight { get; init; }
    public required Tensor KWeight { get; init; }
    public required Tensor VWeight { get; init; }

    // q/k norms, RoPE, the cache and the attention
    public required Tensor Q { get; init; }
    public required Tensor K { get; init; }
    public Tensor? QNorm { get; init; }
    public Tensor? KNorm { get; init; }
    public Tensor? QRstd { get; init; }
    public Tensor? KRstd { get; init; }
    public required Tensor Positions { get; init; }
    public required Tensor Cos { get; init; }
    public required Tensor Sin { get; init; }
    public required int HeadDim { get; init; }
    public required Tensor KCache { get; init; }
    public required Tensor VCache { get; init; }
    public required Tensor CacheRows { get; init; }
    public required Tensor Sequences { get; init; }
    public required Tensor BlockTables { get; init; }
    public required CachedAttentionShape Shape { get; init; }
    public required Tensor Att { get; init; }

    // o_proj + residual, ln2 + gate/up + SwiGLU, down_proj + residual
    public required Tensor OWeight { get; init; }
    public required Tensor Mid { get; init; }
    public required Tensor Ln2 { get; init; }
    public required Tensor Rstd2 { get; init; }
    public required Tensor PostNorm { get; init; }
    public required Tensor Gate { get; init; }
    public required Tensor Up { get; init; }
    public required Tensor H { get; init; }
    public required Tensor GateWeight { get; init; }
    public required Tensor UpWeight { get; init; }
    public required Tensor DownWeight { get; init; }
}
