using FineTune.Engine;

namespace FineTune.Pipeline;

/// <summary>Picks the compute backend a stage runs on from its <c>device:</c> value through the engine's factory.</summary>
public static class StageBackends
{
    /// <param name="notice">Receives the one-line notice when <c>auto</c> falls back to the CPU (once per process).</param>
    public static IBackend Create(string device, string stage, Action<string>? notice = null)
    {
        try
        {
            return Backends.Create(device.Trim().ToLowerInvariant(), notice: notice);
        }
        catch (Exception e) when (e is NotSupportedException or ArgumentException or FineTune.Engine.Cuda.CudaException)
        {
            // No driver, no such GPU, or a device string the factory does not know: the pipeline's device: key is the fix.
            throw new PipelineUserException($"stages.{stage}.device: '{device}' — {e.Message.TrimEnd('.')}.", e);
        }
    }
}
