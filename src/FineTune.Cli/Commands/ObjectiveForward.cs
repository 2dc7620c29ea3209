using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine;
using FineTune.Models;
using FineTune.Pipeline;
using FineTune.Training;
using FineTune.Training.Objectives;

namespace FineTune.Cli.Commands;

/// <summary>
/// `finetune forward --objective dpo|kto|rm`: one step of a preference objective on given token ids, written as the JSON
/// that tests/device/pref_reference.py writes for transformers + peft (loss, metrics, per-example scores, every
/// trainable gradient's numel, norm and first values), so the two can be compared on the same weights and tokens.
/// The batch file is pref_reference.py's: {"pairs": [{"prompt", "chosen", "rejected"}]} (dpo, rm) or
/// {"examples": [{"prompt", "completion", "kto_tag", "kl_completion"}]} (kto). All examples form one micro-batch.
/// </summary>
internal static class ObjectiveForward
{
    public static JsonObject Run(CausalLM model, string stage, PreferenceSettings settings, string batchPath)
    {
        JsonNode root;
        try { root = JsonNode.Parse(File.ReadAllText(batchPath)) ?? throw new JsonException("empty"); }
        catch (JsonException e) { throw new PipelineUserException($"{batchPath}: not JSON ({e.Message})."); }
        int[] Ids(JsonNode? n, string what) => n?.AsArray().Select(x => x!.GetValue<int>()).ToArray()
            ?? throw new PipelineUserException($"{batchPath}: every example needs \"{what}\" (a list of token ids).");
        var samples = new List<LoaderSample>();
        var tags = new List<bool>();
        static int[] Masked(int[] prompt, int[] answer) => [.. Enumerable.Repeat(-100, prompt.Length), .. answer];
        if (stage == "kto")
        {
            foreach (var e in root["examples"]?.AsArray() ?? throw new PipelineUserException($"{batchPath}: kto needs \"examples\"."))
            {
                int[] p = Ids(e!["prompt"], "prompt"), c = Ids(e["completion"], "completion"), kl = Ids(e["kl_completion"], "kl_completion");
                samples.Add(new LoaderSample([.. p, .. c, .. p, .. kl], [.. Masked(p, c), .. Masked(p, kl)], [p.Length + c.Length, p.Length + kl.Length]));
                tags.Add(e["kto_tag"]!.GetValue<bool>());
            }
        }
        else
        {
            foreach (var e in root["pairs"]?.AsArray() ?? throw new PipelineUserException($"{batchPath}: {stage} needs \"pairs\"."))
            {
                int[] p = Ids(e!["prompt"], "prompt"), c = Ids(e["chosen"], "chosen"), r = Ids(e["rejected"], "rejected");
                samples.Add(new LoaderSample([.. p, .. c, .. p, .. r], [.. Masked(p, c), .. Masked(p, r)], [p.Length + c.Length, p.Length + r.Length]));
            }
        }
        var (objective, layout) = stage switch
        {
            "dpo" => (PreferenceObjectives.Dpo(settings), PreferenceLayout.Pairs),
            "kto" => (PreferenceObjectives.Kto(settings), PreferenceLayout.Kto),
            "rm" => (PreferenceObjectives.RewardModel(), PreferenceLayout.Rewards),
            _ => throw new PipelineUserException($"--objective {stage}: expected dpo, kto or rm."),
        };
        var loader = new DataLoader(samples.Count, i => samples[i], samples.Count, 0, shuffle: false, padTokenId: 0);
        var training = new PreferenceTraining(objective, layout, referenceWithoutAdapters: true, trainTag: i => tags[i]);
        training.Prepare(model, loader, null, ITrainingMonitor.Silent);
        model.ZeroGrad();
        var outcome = training.Step(model, loader.NextStepBatches(1, out _));
        var grads = new JsonObject();
        double total = 0;
        foreach (var p in model.TrainableParameters)
        {
            var g = new float[p.Length];
            model.Backend.Download(p.Grad!, g);
            double sq = g.Sum(x => (double)x * x);
            total += sq;
            grads[p.Name] = new JsonObject { ["numel"] = g.Length, ["norm"] = Math.Sqrt(sq), ["first"] = new JsonArray(g.Take(8).Select(x => (JsonNode)(double)x).ToArray()) };
        }
        var metrics = new JsonObject();
        foreach (var (k, v) in outcome.Metrics) metrics[k] = v;
        return new JsonObject { ["stage"] = stage, ["loss"] = outcome.Loss, ["metrics"] = metrics, ["gradients"] = grads, ["grad_norm"] = Math.Sqrt(total) };
    }
}
