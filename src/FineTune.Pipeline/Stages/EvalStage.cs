using System.Diagnostics;
using System.Text.Encodings.Web;
using System.Text.Json;
using FineTune.Data.Preprocessing;
using FineTune.Models;
using FineTune.Pipeline.Config;
using FineTune.Tokenizers;
using FineTune.Training;
using FineTune.Training.Evaluation;
using FineTune.Training.Metrics;

namespace FineTune.Pipeline;

/// <summary>
/// The eval stage: loss and perplexity of the trained model (base + adapter, or the full model train wrote) on the
/// split stage's <c>val.ftds</c> → <c>eval_results.json</c>. With <c>predict_with_generate</c> it also completes every
/// validation prompt → <c>generated_predictions.jsonl</c> (prompt, label, predict) and scores the answers
/// (BLEU-4, ROUGE-1/2/L, as LLaMA-Factory reports them) → <c>predict_results.json</c>. A reward model (stage: rm, its
/// value head beside the output) on a split of preference pairs is scored as LLaMA-Factory's rm eval scores it: pairwise
/// loss and accuracy. All numbers go into the lock file.
/// </summary>
public sealed class EvalStage : IStageExecutor
{
    /// <summary>Reads the model, the split (val.ftds) and what train produced; generates with the chat template.</summary>
    public static StageDescription Description { get; } = new(StageKind.Eval, [StageKind.Download, StageKind.Split, StageKind.Train], typeof(EvalConfig),
        StageDescription.TemplateSetting, () => new EvalStage());

    public StageKind Kind => Description.Kind;

    public IReadOnlyList<string> ExternalInputs(StageContext ctx) => [];

    public StageResult Execute(StageContext ctx)
    {
        var cfg = ctx.Block<EvalConfig>();
        string modelDir = ModelOutput.Of(ctx).Directory;
        var split = SplitOutput.Of(ctx);
        var train = TrainOutput.Of(ctx);
        string splitDir = split.Directory, trainDir = train.Directory, valPath = split.Val;
        if (!File.Exists(valPath))
            throw new PipelineUserException($"The eval stage needs validation data but {splitDir} has no val.ftds; set stages.split.val_size above 0.");
        var info = SplitTemplateInfo.Read(splitDir);

        using var backend = StageBackends.Create(cfg.Device, ctx.StageName<EvalConfig>(), ctx.Progress.Info);
        bool isAdapter = train.IsAdapter;
        using var model = TrainStage.Guard(() => isAdapter
            ? CausalLM.Load(modelDir, backend, TrainingSetup.Inference, adapterDirectory: trainDir)
            : CausalLM.Load(trainDir, backend, TrainingSetup.Inference), trainDir);
        using var valSet = TrainStage.Guard(() => TokenizedDataset.Open(valPath), valPath);
        if (valSet.Count == 0)
            throw new PipelineUserException($"{valPath} holds no samples; set stages.split.val_size above 0 (or add data) to evaluate.");

        var clock = Stopwatch.StartNew();
        var loader = TokenizedDatasetLoader.Create(valSet, cfg.PerDeviceEvalBatchSize, seed: 0, shuffle: false, info.PadOrDefault, cfg.MaxSamples);

        // ---- a reward model on preference pairs: LLaMA-Factory's pairwise eval (loss and accuracy) ----
        if (model.HasValueHead && valSet.IsPaired)
            return RewardModelEval(ctx, model, loader, valPath, clock);

        // ---- loss and perplexity ----
        LossResult loss;
        using (var task = ctx.Progress.Start("eval loss", 1))
        {
            loss = TrainStage.Guard(() => FineTuneRecipe.EvaluateLoss(model, loader, ctx.Cancellation), valPath);
            task.Increment(1);
        }
        double evalLoss = loss.MeanLoss;
        var metrics = new Dictionary<string, double>
        {
            ["eval_loss"] = Math.Round(evalLoss, 6),
            ["perplexity"] = Math.Round(Math.Exp(evalLoss), 6),
            ["eval_samples"] = loader.SampleCount,
            ["eval_tokens"] = loss.TokenCount,
            ["eval_runtime"] = Math.Round(clock.Elapsed.TotalSeconds, 4),
        };
        WriteJson(Path.Combine(ctx.OutputDirectory, "eval_results.json"), new SortedDictionary<string, double>(metrics));
        var notes = new List<string> { $"eval_loss {evalLoss:F4}, perplexity {Math.Exp(evalLoss):F3} over {loss.TokenCount} tokens of {loader.SampleCount} samples" };

        // ---- generation and BLEU/ROUGE ----
        if (cfg.PredictWithGenerate)
        {
            var predict = Predict(ctx, cfg, model, valSet, loader.SampleCount, modelDir, info);
            foreach (var (k, v) in predict) metrics[k] = v;
            notes.Add($"predict: bleu-4 {predict["predict_bleu-4"]:F2}, rouge-1 {predict["predict_rouge-1"]:F2}, rouge-2 {predict["predict_rouge-2"]:F2}, rouge-l {predict["predict_rouge-l"]:F2} over {predict["predict_samples"]} answers");
        }
        // eval/predict_results.json carry runtimes (as HF writes them): reports; generated_predictions.jsonl is the result.
        return new StageResult(metrics, notes, ["eval_results.json", "predict_results.json"]);
    }

    /// <summary>
    /// A reward model (a value head beside the trained adapter or model) on the validation pairs of its split: the pairwise
    /// loss −log σ(s_chosen − s_rejected) and the share of pairs scored chosen above rejected, as LLaMA-Factory's rm eval
    /// reports them (eval_loss, eval_accuracy) → eval_results.json.
    /// </summary>
    static StageResult RewardModelEval(StageContext ctx, CausalLM model, DataLoader loader, string valPath, Stopwatch clock)
    {
        ObjectiveOutcome outcome;
        using (var task = ctx.Progress.Start("eval rewards", 1))
        {
            var rm = new PreferenceTraining(Training.Objectives.PreferenceObjectives.RewardModel(), PreferenceLayout.Rewards, referenceWithoutAdapters: true);
            outcome = TrainStage.Guard(() => rm.Evaluate(model, loader, ctx.Cancellation), valPath);
            task.Increment(1);
        }
        var metrics = new Dictionary<string, double>
        {
            ["eval_loss"] = Math.Round(outcome.Loss, 6),
            ["eval_accuracy"] = Math.Round(outcome.Metrics["accuracy"], 6),
            ["eval_samples"] = loader.SampleCount,
            ["eval_runtime"] = Math.Round(clock.Elapsed.TotalSeconds, 4),
        };
        WriteJson(Path.Combine(ctx.OutputDirectory, "eval_results.json"), new SortedDictionary<string, double>(metrics));
        return new StageResult(metrics, [$"reward model: eval_accuracy {metrics["eval_accuracy"]:F4}, eval_loss {outcome.Loss:F4} over {loader.SampleCount} validation pairs"],
            ["eval_results.json"]);
    }

    static Dictionary<string, double> Predict(StageContext ctx, EvalConfig cfg, CausalLM model, TokenizedDataset valSet, int sampleCount,
        string modelDir, SplitTemplateInfo info)
    {
        var tokenizer = Tokenizer.FromDirectory(modelDir);
        var stop = new HashSet<int>();
        if (info.EosTokenId is int eos) stop.Add(eos);
        if (tokenizer.EosTokenId is int teos) stop.Add(teos);
        foreach (var word in info.StopWords) if (tokenizer.TokenToId(word) is int id) stop.Add(id);
        var options = new GenerationOptions
        {
            MaxNewTokens = cfg.MaxNewTokens, DoSample = cfg.DoSample, Temperature = cfg.Temperature, TopP = cfg.TopP,
            TopK = cfg.TopK, RepetitionPenalty = cfg.RepetitionPenalty, EosTokenIds = [.. stop.Order()], Seed = 0,
        };

        var prompts = Enumerable.Range(0, sampleCount)
            .SelectMany(i => PredictionSet.FromSample(valSet.InputIds(i).ToArray(), valSet.Labels(i).ToArray(), valSet.SequenceLengths(i).ToArray()))
            .ToList();
        var labels = new List<string>();
        var predictions = new List<string>();
        var clock = Stopwatch.StartNew();
        string jsonlPath = Path.Combine(ctx.OutputDirectory, "generated_predictions.jsonl");
        var jsonOptions = new JsonSerializerOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using (var writer = new StreamWriter(jsonlPath))
        using (var task = ctx.Progress.Start("predict", prompts.Count))
        {
            // Batches of per_device_eval_batch_size prompts (left-padded by the engine's KV-cache generator).
            for (int start = 0; start < prompts.Count; start += cfg.PerDeviceEvalBatchSize)
            {
                ctx.Cancellation.ThrowIfCancellationRequested();
                var batch = prompts.Skip(start).Take(cfg.PerDeviceEvalBatchSize).ToList();
                var generated = TrainStage.Guard(() => model.Generate(batch.Select(p => p.PromptIds).ToList(), options with { Seed = start }), "predict");
                for (int i = 0; i < batch.Count; i++)
                {
                    string prompt = tokenizer.Decode(batch[i].PromptIds, skipSpecialTokens: false);
                    string label = tokenizer.Decode(batch[i].LabelIds, skipSpecialTokens: true).Trim();
                    string predict = tokenizer.Decode(generated[i].Tokens, skipSpecialTokens: true).Trim();
                    labels.Add(label);
                    predictions.Add(predict);
                    writer.Write(JsonSerializer.Serialize(new Dictionary<string, string> { ["prompt"] = prompt, ["label"] = label, ["predict"] = predict }, jsonOptions));
                    writer.Write('\n');
                }
                task.Increment(batch.Count);
            }
        }
        double seconds = clock.Elapsed.TotalSeconds;
        var scores = GenerationMetrics.Compute(labels, predictions);
        var results = new Dictionary<string, double>(scores.ToDictionary())
        {
            ["predict_samples"] = prompts.Count,
            ["predict_runtime"] = Math.Round(seconds, 4),
            ["predict_samples_per_second"] = seconds > 0 ? Math.Round(prompts.Count / seconds, 3) : 0,
        };
        WriteJson(Path.Combine(ctx.OutputDirectory, "predict_results.json"), new SortedDictionary<string, double>(results));
        return results;
    }

    static void WriteJson(string path, object value) =>
        File.WriteAllText(path, JsonSerializer.Serialize(value, new JsonSerializerOptions { WriteIndented = true }) + "\n");
}
