namespace FineTune.Pipeline.Validation;

/// <summary>One problem in a pipeline file, located at a line and column (1-based).</summary>
/// <param name="JsonPath">Path of the value, e.g. <c>$.stages.train.lora_rank</c>.</param>
public sealed record PipelineError(string File, int Line, int Column, string JsonPath, string Message)
{
    /// <summary>Line 0: the error is about a command-line override, which <see cref="File"/> names.</summary>
    public override string ToString() => Line == 0 ? $"{File}: {JsonPath}: {Message}" : $"{File}:{Line}:{Column}: {JsonPath}: {Message}";
}

/// <summary>A pipeline file with one or more errors; <see cref="Exception.Message"/> lists all of them, one per line.</summary>
public sealed class PipelineValidationException(IReadOnlyList<PipelineError> errors)
    : PipelineUserException(string.Join(Environment.NewLine, errors.Select(e => e.ToString())))
{
    public IReadOnlyList<PipelineError> Errors { get; } = errors;
}
