using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine;
using FineTune.Models;
using FineTune.Pipeline;

namespace FineTune.Cli.Commands;

/// <summary>
/// `finetune forward`: one forward (and, with --grads, backward) pass of a model, optionally with a PEFT
/// adapter, on given token ids. Writes logits, the mean loss and the trainable gradients to a safetensors file
/// so that another implementation (transformers + peft, tests/device/hf_equality.py) can be compared with
/// FineTune on exactly the same weights and tokens.
/// </summary>
public sealed class ForwardCommand : ICliCommand
{
    public Command Create()
    {
        var model = new Option<string>("--model") { Description = "HF model directory.", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "PEFT LoRA adapter directory, applied unmerged." };
        var tokens = new Option<string?>("--tokens") { Description = "JSON file with a list of token-id lists (one row each; rows are right-padded)." };
        var output = new Option<string>("--out") { Description = "Output .safetensors: logits [rows, seq, vocab], loss [1], and with --grads one gradient per trainable tensor.", Required = true };
        var device = new Option<string>("--device") { Description = "cpu, auto, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
        var grads = new Option<bool>("--grads") { Description = "Also run the backward pass and write the gradients of the adapter's tensors (loss = mean over labelled tokens)." };
        var quantizationBit = new Option<int?>("--quantization-bit") { Description = "QLoRA: hold the model's decoder linears as NF4 with double quantization (4) or LLM.int8 (8) while running, as quantization_bit." };
        var objective = new Option<string?>("--objective") { Description = "dpo, kto or rm: one step of that objective on --batch (tests/device/pref_reference.py's batch JSON); --out gets its JSON result." };
        var batchFile = new Option<string?>("--batch") { Description = "With --objective: {\"pairs\": [{\"prompt\", \"chosen\", \"rejected\"}]} or {\"examples\": [{\"prompt\", \"completion\", \"kto_tag\", \"kl_completion\"}]}." };
        var prefLoss = new Option<string>("--pref-loss") { DefaultValueFactory = _ => "sigmoid", Description = "With --objective dpo: sigmoid, hinge, ipo, orpo or simpo." };
        var prefBeta = new Option<double>("--pref-beta") { DefaultValueFactory = _ => 0.1 };
        var prefFtx = new Option<double>("--pref-ftx") { DefaultValueFactory = _ => 0.0 };
        var smoothing = new Option<double>("--dpo-label-smoothing") { DefaultValueFactory = _ => 0.0 };
        var simpoGamma = new Option<double>("--simpo-gamma") { DefaultValueFactory = _ => 0.5 };
        var ktoChosen = new Option<double>("--kto-chosen-weight") { DefaultValueFactory = _ => 1.0 };
        var ktoRejected = new Option<double>("--kto-rejected-weight") { DefaultValueFactory = _ => 1.0 };
        var command = new Command("forward", "Run one forward/backward pass on given tokens and write logits, loss and LoRA gradients (for equality checks against transformers/peft).")
        {
            model, adapter, tokens, output, device, grads, quantizationBit, objective, batchFile, prefLoss, prefBeta, prefFtx, smoothing, simpoGamma, ktoChosen, ktoRejected,
        };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            if (r.GetValue(objective) is { } stage)
            {
                if (r.GetValue(adapter) is not { } adapterPath)
                    throw new PipelineUserException("--objective needs --adapter: the reference is the model with that adapter disabled, the gradients are the adapter's.");
                string batchPath = r.GetValue(batchFile) ?? throw new PipelineUserException("--objective needs --batch (a JSON file of token ids).");
                if (!Enum.TryParse<FineTune.Training.Objectives.PreferenceLoss>(r.GetValue(prefLoss), ignoreCase: true, out var lossKind))
                    throw new PipelineUserException($"--pref-loss {r.GetValue(prefLoss)}: expected sigmoid, hinge, ipo, orpo or simpo.");
                var settings = new FineTune.Training.Objectives.PreferenceSettings
                {
                    PrefLoss = lossKind, PrefBeta = r.GetValue(prefBeta), PrefFtx = r.GetValue(prefFtx), DpoLabelSmoothing = r.GetValue(smoothing),
                    SimpoGamma = r.GetValue(simpoGamma), KtoChosenWeight = r.GetValue(ktoChosen), KtoRejectedWeight = r.GetValue(ktoRejected),
                };
                using var objectiveBackend = Backends.Create(r.GetValue(device)!, notice: Console.Error.WriteLine);
                using var policy = CausalLM.Load(r.GetValue(model)!, objectiveBackend, new TrainingSetup { LoraDropout = 0, ValueHeadDropout = 0 }, adapterPath);
                JsonObject result;
                try { result = ObjectiveForward.Run(policy, stage, settings, batchPath); }
                catch (FineTune.Training.TrainingException e) { throw new PipelineUserException(e.Message, e); }
                File.WriteAllText(r.GetValue(output)!, result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                Console.WriteLine($"{stage} loss {(double)result["loss"]!:F8} grad_norm {(double)result["grad_norm"]!:E6}");
                return 0;
            }
            string tokensPath = r.GetValue(tokens) ?? throw new PipelineUserException("forward needs --tokens (or --objective with --batch).");
            int[][] rows = ReadRows(tokensPath);
            int seqLen = rows.Max(x => x.Length);
            var batch = TokenBatch.FromSequences(rows, seqLen);
            bool wantGrads = r.GetValue(grads);
            string? adapterDir = r.GetValue(adapter);
            if (wantGrads && adapterDir is null)
                throw new PipelineUserException("--grads needs --adapter: the gradients written are those of the adapter's LoRA tensors.");

            using var backend = Backends.Create(r.GetValue(device)!, notice: Console.Error.WriteLine);
            var setup = adapterDir is null ? TrainingSetup.Inference : new TrainingSetup { LoraDropout = 0 };
            if (r.GetValue(quantizationBit) is { } bits)
            {
                if (bits is not (4 or 8)) throw new PipelineUserException($"--quantization-bit {bits}: use 4 (NF4) or 8 (LLM.int8).");
                setup = setup with { Quantization = new FineTune.Models.Quantization.QuantizationSetup(bits) };
            }
            using var lm = CausalLM.Load(r.GetValue(model)!, backend, setup, adapterDir);
            float[] logits = lm.ForwardLogits(batch);
            var loss = lm.Forward(batch);

            var writer = new SafetensorsWriter();
            writer.Add("logits", logits, [rows.Length, seqLen, lm.Spec.VocabSize]);
            writer.Add("loss", [(float)loss.MeanLoss], [1]);
            if (wantGrads)
            {
                lm.ZeroGrad();
                lm.ForwardBackward(batch, 1f / batch.LabelCount);
                foreach (var p in lm.TrainableParameters)
                {
                    // PEFT's layout and shape (an expert LoRA's B is regrouped in the engine).
                    var (g, shape) = lm.GradientInFileLayout(p);
                    writer.Add("grad." + p.Name, g, shape);
                }
            }
            writer.Save(r.GetValue(output)!);
            Console.WriteLine(JsonSerializer.Serialize(new { rows = rows.Length, seq_len = seqLen, loss = loss.MeanLoss, labelled_tokens = loss.TokenCount, gradients = wantGrads ? lm.TrainableParameters.Count : 0 }));
            return 0;
        }));
        return command;
    }

    private static int[][] ReadRows(string path)
    {
        if (!File.Exists(path)) throw new PipelineUserException($"{path}: file not found; --tokens takes a JSON file such as [[1, 2, 3], [4, 5]].");
        int[][]? rows;
        try
        {
            rows = JsonSerializer.Deserialize<int[][]>(File.ReadAllText(path));
        }
        catch (JsonException e)
        {
            throw new PipelineUserException($"{path}:{e.LineNumber + 1}: not a JSON list of token-id lists ({e.Message}).");
        }
        if (rows is null || rows.Length == 0 || rows.Any(x => x is null || x.Length < 2))
            throw new PipelineUserException($"{path}: expected at least one row of two or more token ids, as in [[1, 2, 3]].");
        return rows;
    }
}
