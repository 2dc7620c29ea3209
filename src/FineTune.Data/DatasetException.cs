namespace FineTune.Data;

/// <summary>A problem with a user's dataset or registry; the message names the file and what to do.</summary>
public class DatasetException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>One located problem: file, 1-based record number (and line when known), field, what was expected.</summary>
public sealed record DataProblem(string File, int Record, int? Line, string Field, string Message)
{
    public override string ToString()
    {
        var where = Record > 0 ? $"record {Record}" : "file";
        if (Line is { } line) where += Record > 0 ? $" (line {line})" : $" line {line}";
        return Field.Length == 0 ? $"{File}: {where}: {Message}" : $"{File}: {where}, field '{Field}': {Message}";
    }
}

/// <summary>Records that failed validation: at most the first 20 are listed, with the total.</summary>
public sealed class DatasetValidationException : DatasetException
{
    public const int MaxListed = 20;

    public DatasetValidationException(string dataset, IReadOnlyList<DataProblem> problems, int total)
        : base(Format(dataset, problems, total))
    {
        Dataset = dataset;
        Problems = problems;
        TotalProblems = total;
    }

    public string Dataset { get; }
    public IReadOnlyList<DataProblem> Problems { get; }
    public int TotalProblems { get; }

    private static string Format(string dataset, IReadOnlyList<DataProblem> problems, int total)
    {
        var lines = new List<string>
        {
            $"Dataset '{dataset}' has {total} invalid record{(total == 1 ? "" : "s")}" +
            (total > problems.Count ? $" (first {problems.Count} listed)" : "") + ":",
        };
        lines.AddRange(problems.Select(p => "  " + p));
        lines.Add("Fix these records, or set `skip_invalid: true` under stages.register to drop and count them.");
        return string.Join('\n', lines);
    }
}
