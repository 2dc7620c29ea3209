using FineTune.Engine;

namespace FineTune.Models.Tests;

/// <summary>
/// The CPU backend with graphs: between BeginGraphCapture and EndGraphCapture every operation is recorded instead of
/// run, and the graph's Launch runs the recorded operations again on the same tensors, as a CUDA graph replays its
/// kernels. Transfers, synchronisation and allocation while recording are refused as the CUDA backend refuses them.
/// Lets the CPU tests drive the engine's decode graphs (padding to buckets, recording, replay with new inputs).
/// </summary>
internal sealed class RecordingBackend(IBackend inner) : ForwardingBackend(inner)
{
    private List<Action>? _recording;

    public override bool SupportsGraphs => true;
    public int Recorded { get; private set; }
    public int Launches { get; private set; }

    /// <summary>Operations recorded so far by the capture under way (0 when none is).</summary>
    public int Pending => _recording?.Count ?? 0;

    public override void BeginGraphCapture()
    {
        if (_recording is not null) throw new InvalidOperationException("already recording");
        _recording = [];
    }

    public override IDeviceGraph? EndGraphCapture(bool discard = false)
    {
        var ops = _recording ?? throw new InvalidOperationException("not recording");
        _recording = null;
        if (discard) return null;
        Recorded++;
        return new Graph(this, [.. ops]);
    }

    private sealed class Graph(RecordingBackend owner, Action[] ops) : IDeviceGraph
    {
        public void Launch()
        {
            owner.Launches++;
            foreach (var op in ops) op();
        }

        public void Dispose() { }
    }

    protected override void Run(Action operation)
    {
        if (_recording is not null) _recording.Add(operation);
        else operation();
    }

    protected override void BeforeHost(string what)
    {
        if (_recording is not null) throw new NotSupportedException($"{what} while a graph is being recorded");
    }
}
