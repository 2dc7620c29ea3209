namespace FineTune.Tokenizers;

/// <summary>A tokenizer file that cannot be read: names the file, what was wrong, and what to do.</summary>
public sealed class TokenizerFormatException : Exception
{
    public TokenizerFormatException(string path, string problem, Exception? inner = null)
        : base($"{path}: {problem}", inner)
    {
        Path = path;
    }

    public string Path { get; }
}
