using FineTune.Engine;

namespace FineTune.Pipeline;

/// <summary>Picks the compute backend a stage runs on from its <c>device:</c> value through the engine's factory.</summary>
public static class StageBackends
{
    public static IBackend Create(string device, string stage)
    {
        try
        {
            return Backends.Create(device.Trim().ToLowerInvariant());
        }
        catch (Exception e) when (e is NotSupportedException or ArgumentException or FineTune.Engine.Cuda.CudaException)
        {
            // No driver, no such GPU, or a device string the factory does not know: the pipeline's device: key is the fix.
            throw new PipelineUserException($"stages.{stage}.device: '{device}' — {e.Message.TrimEnd('.')}.", e);
        }
    }
}
