using System.CommandLine;
using System.Diagnostics;
using FineTune.Data;
using FineTune.Data.Preprocessing;
using FineTune.Data.Templates;
using FineTune.Pipeline;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;
using FineTune.Tokenizers;
using Spectre.Console;

namespace FineTune.Cli.Commands;

/// <summary>
/// `finetune data preview`: a few samples as the model will see them — template applied, trained tokens in
/// green, masked prompt tokens grey — to catch a template mismatch before training. `finetune data bench`:
/// preprocessing throughput (samples/s) on the pipeline's data.
/// </summary>
public sealed class DataPreviewCommand : ICliCommand
{
    public Command Create()
    {
        var data = new Command("data", "Look at the pipeline's datasets: preview templated samples, measure preprocessing.");
        data.Subcommands.Add(Preview());
        data.Subcommands.Add(Bench());
        return data;
    }

    private static Command Preview()
    {
        var pipeline = CliSupport.PipelineArgument();
        var dataset = new Option<string?>("--dataset", "-d") { Description = "Show samples of this dataset only (a name from data.dataset)." };
        var count = new Option<int>("--n") { Description = "How many samples to show.", DefaultValueFactory = _ => 3 };
        var command = new Command("preview", "Render samples with the chat template; trained tokens are highlighted.") { pipeline, dataset, count };
        command.SetAction(r => CliSupport.Guard(ct => DataErrors(() =>
        {
            var inputs = DataPreview.Prepare(CliSupport.Load(r.GetValue(pipeline)!), ct);
            var (name, n) = (r.GetValue(dataset), r.GetValue(count));
            var sequences = DataPreview.Samples(inputs, name, n);
            var (tokenizer, template, options) = (inputs.Tokenizer, inputs.Template, inputs.Options);
            var preprocessor = new Preprocessor(tokenizer, template, options);
            AnsiConsole.MarkupLine($"template [bold]{Markup.Escape(template.Name)}[/]{(template.Reasoning ? $" (enable_thinking: {template.EnableThinking.ToString().ToLowerInvariant()})" : "")}, " +
                                   $"cutoff_len {options.CutoffLen}, eos {Markup.Escape(tokenizer.IdToToken(preprocessor.EosId) ?? "?")} — [green]trained[/] / [grey]masked[/]");
            foreach (var sequence in sequences)
            {
                var title = sequence.Title.Length == 0 ? "" : $" [blue]{Markup.Escape(sequence.Title)}[/]";
                AnsiConsole.Write(new Rule($"[bold]{Markup.Escape(sequence.Source)}[/]{title} {sequence.Tokens} tokens, {sequence.Trained} trained{(sequence.Truncated ? ", [yellow]truncated[/]" : "")}").LeftJustified());
                foreach (var s in sequence.Segments)
                    AnsiConsole.Markup(s.Trained ? $"[green]{Markup.Escape(s.Text)}[/]" : $"[grey]{Markup.Escape(s.Text)}[/]");
                AnsiConsole.WriteLine();
            }
            AnsiConsole.MarkupLine($"[grey]{DataPreview.SampleCount(inputs, name, n)} of {inputs.Conversations.Count} samples shown.[/]");
            return 0;
        })));
        return command;
    }

    private static Command Bench()
    {
        var pipeline = CliSupport.PipelineArgument();
        var samples = new Option<int>("--samples") { Description = "Preprocess this many samples (the registered ones, repeated).", DefaultValueFactory = _ => 20000 };
        var tokenizerPath = new Option<string?>("--tokenizer") { Description = "Use this tokenizer.json or model directory instead of the pipeline's model." };
        var command = new Command("bench", "Measure preprocessing throughput (template + tokenize + labels) in samples/s.") { pipeline, samples, tokenizerPath };
        command.SetAction(r => CliSupport.Guard(ct => DataErrors(() =>
        {
            var (_, conversations, tokenizer, template, options) = DataPreview.Prepare(CliSupport.Load(r.GetValue(pipeline)!), ct, r.GetValue(tokenizerPath));
            var n = Math.Max(1, r.GetValue(samples));
            var input = Enumerable.Range(0, n).Select(i => conversations[i % conversations.Count]).ToList();
            var preprocessor = new Preprocessor(tokenizer, template, options);
            preprocessor.Process(input.Take(Math.Min(200, n)).ToList()); // warm-up (JIT)
            var watch = Stopwatch.StartNew();
            var result = preprocessor.Process(input);
            var seconds = watch.Elapsed.TotalSeconds;
            AnsiConsole.MarkupLine($"template {Markup.Escape(template.Name)}, {n} samples → {result.Stats.Samples} rows, {result.Stats.Tokens} tokens in {seconds:0.000} s: " +
                                   $"[bold]{n / seconds:0} samples/s[/], {result.Stats.Tokens / seconds / 1e6:0.00} M tokens/s (one thread, {Environment.ProcessorCount} cores)");
            return 0;
        })));
        return command;
    }

    /// <summary>Dataset and template errors are the user's: shown as messages, not stack traces.</summary>
    private static int DataErrors(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (DatasetException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
    }
}
