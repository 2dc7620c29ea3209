using FineTune.Engine;
using FineTune.Engine.Sampling;

namespace FineTune.Models.Generation;

/// <summary>
/// Device buffers of the steps that sample or penalise repetition (<see cref="IBackend.SampleRows"/>): one parameter
/// row per logit row, the seen ids of the penalised rows, and an F32 working row per logit row. Made on the first such
/// step (a greedy-only engine never holds them); the seen buffer grows with the longest list a step needs.
/// </summary>
internal sealed class SamplingBuffers(IBackend backend, int maxRows, int vocab) : IDisposable
{
    private TensorArena? _arena;
    private TensorArena? _seenArena;
    private int _seenCapacity;

    public Tensor Parameters { get; private set; } = null!;
    public Tensor Scratch { get; private set; } = null!;
    public Tensor Seen { get; private set; } = null!;

    /// <summary>Makes sure the buffers exist and the seen buffer holds <paramref name="seenIds"/> ids.</summary>
    public void Ensure(int seenIds)
    {
        if (_arena is null)
        {
            var b = new TensorArena.Builder();
            int hp = b.Add("sample_params", DType.I32, maxRows * SamplingRow.Ints), hs = b.Add("sample_scratch", DType.F32, maxRows, vocab);
            _arena = b.Build(backend);
            Parameters = _arena[hp];
            Scratch = _arena[hs];
        }
        if (_seenArena is null || seenIds > _seenCapacity)
        {
            _seenArena?.Dispose();
            _seenCapacity = Math.Max(1024, Math.Max(seenIds, _seenCapacity * 2));
            var b = new TensorArena.Builder();
            int h = b.Add("sample_seen", DType.I32, _seenCapacity);
            _seenArena = b.Build(backend);
            Seen = _seenArena[h];
        }
    }

    public void Dispose()
    {
        _arena?.Dispose();
        _seenArena?.Dispose();
    }
}
