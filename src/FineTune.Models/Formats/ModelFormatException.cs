namespace FineTune.Models;

/// <summary>
/// A model file (config.json, *.safetensors, an index, an adapter, a GGUF) that FineTune cannot use as it is.
/// The message names the file (and the tensor or key) and says what to do.
/// </summary>
public sealed class ModelFormatException : Exception
{
    public ModelFormatException(string filePath, string message)
        : base($"{filePath}: {message}")
    {
        FilePath = filePath;
    }

    public ModelFormatException(string filePath, string message, Exception inner)
        : base($"{filePath}: {message}", inner)
    {
        FilePath = filePath;
    }

    /// <summary>The file that was being read or written.</summary>
    public string FilePath { get; }
}
