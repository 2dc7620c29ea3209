using FineTune.Pipeline;
using Spectre.Console;

namespace FineTune.Cli.Commands;

/// <summary>
/// Stage progress on the console: Spectre.Console progress bars on an interactive terminal, plain lines
/// (start, every 10 %, done) when output is redirected (CI logs).
/// </summary>
public sealed class ConsoleStageProgress : IStageProgress
{
    private readonly ProgressContext? _live;

    public ConsoleStageProgress(ProgressContext? live) => _live = live;

    public IProgressTask Start(string description, double total) =>
        _live is not null ? new LiveTask(_live.AddTask(Markup.Escape(description), maxValue: Math.Max(total, 1e-9))) : new LineTask(description, total);

    public void Info(string line) => AnsiConsole.MarkupLine($"  [grey]{Markup.Escape(line)}[/]");

    /// <summary>Runs <paramref name="body"/> with a live progress display when the terminal supports one.</summary>
    public static T Run<T>(Func<IStageProgress, T> body)
    {
        if (!AnsiConsole.Profile.Capabilities.Interactive)
            return body(new ConsoleStageProgress(null));
        return AnsiConsole.Progress()
            .AutoClear(true)
            .HideCompleted(true)
            // No RemainingTimeColumn: the train stage's description carries the trainer's own ETA, and two ETAs disagree.
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn())
            .Start(ctx => body(new ConsoleStageProgress(ctx)));
    }

    private sealed class LiveTask(ProgressTask task) : IProgressTask
    {
        public void Increment(double by) => task.Increment(by);
        public void SetDescription(string description) => task.Description = Markup.Escape(description);
        public void Dispose() => task.StopTask();
    }

    private sealed class LineTask : IProgressTask
    {
        private readonly double _total;
        private string _description;
        private double _done;
        private int _lastDecile;

        public LineTask(string description, double total)
        {
            _description = description;
            _total = total;
            Console.WriteLine($"  {description} …");
        }

        public void Increment(double by)
        {
            _done += by;
            var decile = _total <= 0 ? 10 : (int)Math.Min(10, Math.Floor(_done / _total * 10));
            if (decile > _lastDecile && decile < 10)
            {
                _lastDecile = decile;
                Console.WriteLine($"  {_description}: {decile * 10} %");
            }
        }

        public void SetDescription(string description) => _description = description;

        public void Dispose() => Console.WriteLine($"  {_description}: done");
    }
}
