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
            var (loaded, conversations, tokenizer, template, options) = Prepare(r.GetValue(pipeline)!, ct);
            var name = r.GetValue(dataset);
            if (name is not null && !loaded.Definition.Data.Dataset.Contains(name))
                throw new PipelineUserException($"--dataset {name}: the pipeline's data.dataset lists {string.Join(", ", loaded.Definition.Data.Dataset)}.");
            var chosen = conversations.Where(c => name is null || c.Source.StartsWith(name + ":", StringComparison.Ordinal)).Take(Math.Max(1, r.GetValue(count))).ToList();
            var preprocessor = new Preprocessor(tokenizer, template, options);
            AnsiConsole.MarkupLine($"template [bold]{Markup.Escape(template.Name)}[/]{(template.Reasoning ? $" (enable_thinking: {template.EnableThinking.ToString().ToLowerInvariant()})" : "")}, " +
                                   $"cutoff_len {options.CutoffLen}, eos {Markup.Escape(tokenizer.IdToToken(preprocessor.EosId) ?? "?")} — [green]trained[/] / [grey]masked[/]");
            foreach (var c in chosen)
            {
                // A KTO sample's KL sequence borrows the completion of the sample before it.
                var at = IndexOf(conversations, c);
                var previous = conversations[(at + conversations.Count - 1) % conversations.Count];
                foreach (var sequence in SamplePreview.Sequences(preprocessor, options.Stage, c, previous))
                {
                    var trained = sequence.Labels.Count(l => l != TokenizedSample.IgnoreIndex);
                    var title = sequence.Title.Length == 0 ? "" : $" [blue]{Markup.Escape(sequence.Title)}[/]";
                    AnsiConsole.Write(new Rule($"[bold]{Markup.Escape(c.Source)}[/]{title} {sequence.InputIds.Length} tokens, {trained} trained{(sequence.Truncated ? ", [yellow]truncated[/]" : "")}").LeftJustified());
                    foreach (var s in SamplePreview.Segments(tokenizer, sequence.InputIds, sequence.Labels))
                        AnsiConsole.Markup(s.Trained ? $"[green]{Markup.Escape(s.Text)}[/]" : $"[grey]{Markup.Escape(s.Text)}[/]");
                    AnsiConsole.WriteLine();
                }
            }
            AnsiConsole.MarkupLine($"[grey]{chosen.Count} of {conversations.Count} samples shown.[/]");
            return 0;
        })));
        return command;
    }

    private static int IndexOf(IReadOnlyList<Conversation> all, Conversation c)
    {
        for (var i = 0; i < all.Count; i++) if (ReferenceEquals(all[i], c)) return i;
        return 0;
    }

    private static Command Bench()
    {
        var pipeline = CliSupport.PipelineArgument();
        var samples = new Option<int>("--samples") { Description = "Preprocess this many samples (the registered ones, repeated).", DefaultValueFactory = _ => 20000 };
        var tokenizerPath = new Option<string?>("--tokenizer") { Description = "Use this tokenizer.json or model directory instead of the pipeline's model." };
        var command = new Command("bench", "Measure preprocessing throughput (template + tokenize + labels) in samples/s.") { pipeline, samples, tokenizerPath };
        command.SetAction(r => CliSupport.Guard(ct => DataErrors(() =>
        {
            var (_, conversations, tokenizer, template, options) = Prepare(r.GetValue(pipeline)!, ct, r.GetValue(tokenizerPath));
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

    /// <summary>Brings download and register up to date (cached runs cost nothing) and loads what preprocessing needs.</summary>
    private static (Pipeline.Validation.LoadedPipeline, IReadOnlyList<Conversation>, Tokenizer, ChatTemplate, PreprocessOptions) Prepare(string path, CancellationToken ct, string? tokenizerOverride = null)
    {
        var loaded = CliSupport.Load(path);
        var def = loaded.Definition;
        // The pipeline's first register stage, and the split that reads it (its settings shape the preview).
        var register = def.Stages.OfKind(StageKind.Register).FirstOrDefault()
            ?? throw new PipelineUserException($"{loaded.FilePath}: the pipeline has no stages.register block; add `register: {{}}` under stages.");
        var splitStage = def.Stages.Readers(register.Name).FirstOrDefault(s => s.Kind == StageKind.Split);
        var runner = PipelineRunner.CreateDefault();
        string Output(string name)
        {
            var report = runner.Run(loaded, new RunOptions { Stage = name }, new NullStageProgress(), ct);
            return report.Stages.Single(s => s.Name == name).OutputDirectory
                   ?? throw new PipelineUserException($"stage {name} has no output; run `finetune run {path} --stage {name}`.");
        }
        var conversations = ConversationFile.Read(new RegisterOutput(Output(register.Name)).Conversations);
        Tokenizer tokenizer;
        try
        {
            tokenizer = tokenizerOverride is not null
                ? (Directory.Exists(tokenizerOverride) ? Tokenizer.FromDirectory(tokenizerOverride) : Tokenizer.FromFile(tokenizerOverride))
                : Tokenizer.FromDirectory(Output(def.Stages.OfKind(StageKind.Download).FirstOrDefault()?.Name
                    ?? throw new PipelineUserException($"{loaded.FilePath}: the pipeline has no stages.download block (the tokenizer comes from the model); add `download: {{}}` under stages or pass --tokenizer.")));
        }
        catch (TokenizerFormatException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
        var split = splitStage?.Block as SplitConfig ?? new SplitConfig();
        try
        {
            return (loaded, conversations, tokenizer, ChatTemplate.Get(def.Data.Template ?? "empty", split.EnableThinking), SplitStage.Options(split));
        }
        catch (DatasetException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
    }
}
