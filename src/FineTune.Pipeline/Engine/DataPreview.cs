using FineTune.Data;
using FineTune.Data.Preprocessing;
using FineTune.Data.Templates;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;
using FineTune.Tokenizers;

namespace FineTune.Pipeline.Engine;

/// <summary>What preprocessing a pipeline's data needs: its registered conversations, tokenizer, template and split options.</summary>
public sealed record PreviewInputs(LoadedPipeline Pipeline, IReadOnlyList<Conversation> Conversations, Tokenizer Tokenizer, ChatTemplate Template,
    PreprocessOptions Options);

/// <summary>One sequence of a previewed sample: where it came from, its tokens, and its text cut where training switches on or off.</summary>
public sealed record PreviewedSequence(string Source, string Title, int Tokens, int Trained, bool Truncated, IReadOnlyList<PreviewSegment> Segments);

/// <summary>
/// Samples as the model will see them (template applied, trained and masked tokens told apart): what `finetune data
/// preview` prints and the board's Data page shows, from one piece of code.
/// </summary>
public static class DataPreview
{
    /// <summary>
    /// Brings download and register up to date (a cached stage is only looked up: no run lock, so a preview never waits
    /// for a training run) and loads what preprocessing needs.
    /// </summary>
    public static PreviewInputs Prepare(LoadedPipeline loaded, CancellationToken ct, string? tokenizerOverride = null)
    {
        var def = loaded.Definition;
        // The pipeline's first register stage, and the split that reads it (its settings shape the preview).
        var register = def.Stages.OfKind(StageKind.Register).FirstOrDefault()
            ?? throw new PipelineUserException($"{loaded.FilePath}: the pipeline has no stages.register block; add `register: {{}}` under stages.");
        var splitStage = def.Stages.Readers(register.Name).FirstOrDefault(s => s.Kind == StageKind.Split);
        var runner = PipelineRunner.CreateDefault();
        string Output(string name)
        {
            var cached = runner.Run(loaded, new RunOptions { Stage = name, DryRun = true }, new NullStageProgress(), ct).Stages.Single(s => s.Name == name);
            if (cached.State == StageState.UpToDate && cached.OutputDirectory is { } dir) return dir;
            var report = runner.Run(loaded, new RunOptions { Stage = name }, new NullStageProgress(), ct);
            return report.Stages.Single(s => s.Name == name).OutputDirectory
                   ?? throw new PipelineUserException($"stage {name} has no output; run `finetune run {loaded.FilePath} --stage {name}`.");
        }
        try
        {
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
            return new PreviewInputs(loaded, conversations, tokenizer, ChatTemplate.Get(def.Data.Template ?? "empty", split.EnableThinking), SplitStage.Options(split));
        }
        catch (DatasetException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
    }

    /// <summary>
    /// The first <paramref name="count"/> samples (of <paramref name="dataset"/> only, when named) as the sequences they
    /// become: one for sft/pt, chosen and rejected for a pair, completion and KL sequence for a KTO sample.
    /// </summary>
    public static IReadOnlyList<PreviewedSequence> Samples(PreviewInputs inputs, string? dataset, int count)
    {
        var all = inputs.Conversations;
        if (dataset is not null && !inputs.Pipeline.Definition.Data.Dataset.Contains(dataset))
            throw new PipelineUserException($"--dataset {dataset}: the pipeline's data.dataset lists {string.Join(", ", inputs.Pipeline.Definition.Data.Dataset)}.");
        var preprocessor = new Preprocessor(inputs.Tokenizer, inputs.Template, inputs.Options);
        var result = new List<PreviewedSequence>();
        int shown = 0;
        for (int at = 0; at < all.Count && shown < Math.Max(1, count); at++)
        {
            var c = all[at];
            if (dataset is not null && !c.Source.StartsWith(dataset + ":", StringComparison.Ordinal)) continue;
            shown++;
            // A KTO sample's KL sequence borrows the completion of the sample before it.
            var previous = all[(at + all.Count - 1) % all.Count];
            try
            {
                foreach (var s in SamplePreview.Sequences(preprocessor, inputs.Options.Stage, c, previous))
                    result.Add(new PreviewedSequence(c.Source, s.Title, s.InputIds.Length, s.Labels.Count(l => l != TokenizedSample.IgnoreIndex), s.Truncated,
                        SamplePreview.Segments(inputs.Tokenizer, s.InputIds, s.Labels)));
            }
            catch (DatasetException e)
            {
                throw new PipelineUserException(e.Message, e);
            }
        }
        return result;
    }

    /// <summary>How many samples <see cref="Samples"/> looked at (of the dataset, when named).</summary>
    public static int SampleCount(PreviewInputs inputs, string? dataset, int count) =>
        Math.Min(Math.Max(1, count), inputs.Conversations.Count(c => dataset is null || c.Source.StartsWith(dataset + ":", StringComparison.Ordinal)));
}
