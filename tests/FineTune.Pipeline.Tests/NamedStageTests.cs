using System.Text.Json.Nodes;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// Several stages of one kind under their own names (<c>dpo: {kind: train, from: [sft, pref_split]}</c>): a stage reads the
/// stage its from: names, else the only one of that kind, else the one named after the kind.
/// </summary>
public sealed class NamedStageTests : IDisposable
{
    private static readonly string Named = TestPipelines.Scratch("named", placeholders: false) + """
        stages:
          download: {}
          register: {}
          split: {val_size: 0.1}
          sft: {kind: train, learning_rate: 0.005}
          pref_register: {kind: register, dataset: [answers]}
          pref_split: {kind: split, from: pref_register}
          dpo: {kind: train, learning_rate: 0.001, from: [sft, pref_split]}
          eval: {from: dpo}
          merge: {from: dpo}
          export: {formats: [hf]}
        """;

    private readonly TempDir _dir = new();
    private readonly string _counter;

    public NamedStageTests() => _counter = Path.Combine(_dir.Path, "runs.txt");

    public void Dispose() => _dir.Dispose();

    private string Write(string? yaml = null)
    {
        var file = TestPipelines.Write(_dir, yaml ?? Named);
        _dir.Write("data/dataset_info.json", """{"identity": {"file_name": "identity.json"}, "answers": {"file_name": "answers.json"}}""");
        if (!File.Exists(_dir.File("data/answers.json")))
            _dir.Write("data/answers.json", """[{"instruction": "2+2?", "input": "", "output": "4"}]""");
        return file;
    }

    private LoadedPipeline Load(string? yaml = null) => PipelineLoader.Load(Write(yaml));

    private string[] Errors(string yaml)
    {
        var e = Assert.Throws<PipelineValidationException>(() => Load(yaml));
        return e.Errors.Select(x => $"{x.Line}:{x.Column}: {x.JsonPath}: {x.Message}").ToArray();
    }

    private void Edit(string from, string to)
    {
        var text = File.ReadAllText(_dir.File("pipeline.yaml"));
        Assert.Contains(from, text);
        File.WriteAllText(_dir.File("pipeline.yaml"), text.Replace(from, to));
    }

    /// <summary>What each stage was given: its name, work directory and providers (kind → output directory).</summary>
    private sealed class Recorder(IStageExecutor inner, List<StageContext> seen) : IStageExecutor
    {
        public StageKind Kind => inner.Kind;
        public IReadOnlyList<string> ExternalInputs(StageContext ctx) => inner.ExternalInputs(ctx);
        public StageResult Execute(StageContext ctx)
        {
            lock (seen) seen.Add(ctx);
            return inner.Execute(ctx);
        }
    }

    private RunReport Run(RunOptions? options = null, List<StageContext>? seen = null) =>
        new PipelineRunner(FakeStage.All(_counter).Select(e => (IStageExecutor)new Recorder(e, seen ?? [])).ToArray())
            .Run(PipelineLoader.Load(_dir.File("pipeline.yaml")), options ?? new RunOptions(), new NullStageProgress(), CancellationToken.None);

    private string[] RunsSince()
    {
        var runs = FakeStage.Runs(_counter);
        File.Delete(_counter);
        return runs;
    }

    [Fact]
    public void EachStageReadsTheStageItsFromNamesOrTheOnlyOneOfThatKind()
    {
        var p = Load();
        Assert.Equal(["download", "register", "pref_register", "split", "pref_split", "sft", "dpo", "eval", "merge", "export"], p.Stages.Select(s => s.Name));
        string Reads(string name) => string.Join(", ", p.Definition.Stages[name]!.Reads.OrderBy(r => r.Key).Select(r => $"{r.Key}={r.Value}"));
        Assert.Equal("Download=download, Register=register", Reads("split"));
        Assert.Equal("Download=download, Register=pref_register", Reads("pref_split"));
        Assert.Equal("Download=download, Split=split", Reads("sft"));
        Assert.Equal("Download=download, Split=pref_split, Train=sft", Reads("dpo"));
        Assert.Equal("Download=download, Split=split, Train=dpo", Reads("eval"));
        Assert.Equal("Download=download, Train=dpo", Reads("merge"));
        Assert.Equal("Merge=merge", Reads("export"));
        Assert.Equal(0.001, ((TrainConfig)p.Definition.Stages["dpo"]!.Block).LearningRate);
        Assert.Equal(["answers"], ((RegisterConfig)p.Definition.Stages["pref_register"]!.Block).Dataset);
        Assert.Null(p.Definition.Stages.Train); // no stage is named train
    }

    [Fact]
    public void SeveralProvidersNoneNamedAfterTheKindAndNoFromIsALocatedError()
    {
        Assert.Equal(["18:9: $.stages.eval: stages.eval reads a train stage and the pipeline has 2 (sft, dpo): add from: dpo"],
            Errors(Named.Replace("eval: {from: dpo}", "eval: {}")));
        var noSplitByName = Named.Replace("split: {val_size: 0.1}", "sft_split: {kind: split, val_size: 0.1}");
        Assert.Equal(
        [
            "14:8: $.stages.sft: stages.sft reads a split stage and the pipeline has 2 (sft_split, pref_split): add from: pref_split",
            "18:16: $.stages.eval.from: stages.eval reads a split stage and the pipeline has 2 (sft_split, pref_split): name one in from (from: [dpo, pref_split])",
        ], Errors(noSplitByName));
        Assert.Equal("sft_split", Load(noSplitByName.Replace("sft: {kind: train,", "sft: {kind: train, from: sft_split,").Replace("eval: {from: dpo}", "eval: {from: [dpo, sft_split]}"))
            .Definition.Stages["eval"]!.Reads[StageKind.Split]);
    }

    [Fact]
    public void FromNamingAnUnknownStageSuggestsTheClosestName()
    {
        Assert.Equal(["19:17: $.stages.merge.from[0]: no stage named 'dpp' in stages; did you mean 'dpo'?"],
            Errors(Named.Replace("merge: {from: dpo}", "merge: {from: dpp}")));
    }

    [Fact]
    public void FromNamingItselfAnotherKindALaterStageOrTwoOfAKindIsLocatedAtTheName()
    {
        Assert.Equal(["17:63: $.stages.dpo.from[1]: stage dpo cannot read itself; name the stages it reads"],
            Errors(Named.Replace("from: [sft, pref_split]", "from: [pref_split, dpo, sft]")));
        Assert.Equal(["18:22: $.stages.eval.from[1]: stage eval does not read a register stage ('pref_register' is one); it reads download, split, train stages"],
            Errors(Named.Replace("eval: {from: dpo}", "eval: {from: [dpo, pref_register]}")));
        Assert.Equal(["14:50: $.stages.sft.from[0]: stage 'dpo' comes after stage sft; a stage reads only stages before it (in pipeline order, and in the file's order among stages of one kind)"],
            Errors(Named.Replace("sft: {kind: train, learning_rate: 0.005}", "sft: {kind: train, learning_rate: 0.005, from: dpo}")));
        Assert.Equal(["17:68: $.stages.dpo.from[2]: from names two split stages (pref_split, split); a stage reads one stage of each kind"],
            Errors(Named.Replace("from: [sft, pref_split]", "from: [sft, pref_split, split]")));
    }

    [Fact]
    public void ANameThatIsNotAKindNeedsKindAndTheNameRule()
    {
        Assert.Equal(["14:3: $.stages.sft: stage 'sft' needs kind: one of download, register, split, train, eval, merge, export (a key that is not a kind's name is a stage of the kind its kind: says)"],
            Errors(Named.Replace("sft: {kind: train, learning_rate: 0.005}", "sft: {learning_rate: 0.005}")));
        Assert.Equal(["14:3: $.stages.Sft-1: stage name 'Sft-1' must match [a-z][a-z0-9_]* (a lower-case letter, then lower-case letters, digits or _)"],
            Errors(Named.Replace("sft: {kind: train", "Sft-1: {kind: train").Replace("from: [sft, pref_split]", "from: [Sft-1, pref_split]")));
        Assert.Equal(["14:15: $.stages.sft.kind: expected one of download, register, split, train, eval, merge, export, got 'trian'; did you mean 'train'?"],
            Errors(Named.Replace("sft: {kind: train", "sft: {kind: trian")));
        Assert.Equal(["12:20: $.stages.register.kind: stages.register is the register stage by its name; kind: split contradicts it (give a split stage another name)"],
            Errors(Named.Replace("register: {}", "register: {kind: split}")));
        Assert.Equal(["17:22: $.stages.dpo.lerning_rate: unknown key 'lerning_rate' in stages.dpo; did you mean 'learning_rate'?"],
            Errors(Named.Replace("learning_rate: 0.001", "lerning_rate: 0.001")));
    }

    [Fact]
    public void ChecksRunPerStageAndPointAtThatStagesKeys()
    {
        Assert.Equal(
        [
            "17:51: $.stages.dpo.stage: stage dpo trains on preference pairs (chosen and rejected answers), but dataset 'answers' in data/dataset_info.json has no ranking: true; name datasets that fit the objective in stages.pref_register.dataset",
        ],
            Errors(Named.Replace("learning_rate: 0.001,", "learning_rate: 0.001, stage: dpo,")));
        Assert.Equal(["15:45: $.stages.pref_register.dataset[0]: no dataset named 'answer' in data/dataset_info.json; did you mean 'answers'?"],
            Errors(Named.Replace("dataset: [answers]", "dataset: [answer]")));
        Assert.Equal(["16:60: $.stages.pref_split.val_size: 1.5 is neither a fraction in [0, 1) nor a whole sample count"],
            Errors(Named.Replace("from: pref_register}", "from: pref_register, val_size: 1.5}")));
    }

    [Fact]
    public void LockAndWorkDirectoriesAreKeyedByStageName()
    {
        Write();
        var seen = new List<StageContext>();
        Run(seen: seen);

        var stages = JsonNode.Parse(File.ReadAllText(_dir.File("pipeline.lock")))!["stages"]!.AsObject();
        Assert.Equal(["download", "register", "pref_register", "split", "pref_split", "sft", "dpo", "eval", "merge", "export"], stages.Select(s => s.Key));
        var dpo = stages["dpo"]!.AsObject();
        // Upstream by the provider's name; params keyed by the kind, without kind/from (structure, covered by the upstream hashes).
        Assert.Equal(["download", "pref_split", "sft"], dpo["upstream"]!.AsObject().Select(u => u.Key));
        Assert.Equal(stages["sft"]!["output_hash"]!.GetValue<string>(), dpo["upstream"]!["sft"]!.GetValue<string>());
        Assert.Equal(["train"], dpo["params"]!.AsObject().Select(p => p.Key));
        Assert.DoesNotContain("\"from\"", dpo.ToJsonString());
        Assert.Equal("""{"data":{"placeholders":{},"stage":"sft"},"register":{"dataset":["answers"],"max_samples":null,"skip_invalid":false}}""",
            CanonicalJson.Serialize(stages["pref_register"]!["params"]));

        var ctx = seen.Single(c => c.Stage!.Name == "dpo");
        Assert.Equal(Path.Combine(_dir.Path, ".finetune", "work", "dpo"), ctx.WorkDirectory);
        // dpo builds on sft's output (learning_rate 0.005); eval reads dpo's (0.001), not sft's.
        Assert.Contains("\"learning_rate\":0.005", File.ReadAllText(Path.Combine(TrainOutput.BuiltOn(ctx)!.Directory, "out.txt")));
        var evalReads = seen.Single(c => c.Stage!.Name == "eval").UpstreamOutputs;
        Assert.Contains("\"learning_rate\":0.001", File.ReadAllText(Path.Combine(evalReads[StageKind.Train], "out.txt")));
        Assert.Null(TrainOutput.BuiltOn(seen.Single(c => c.Stage!.Name == "sft")));
    }

    [Fact]
    public void AChangeReRunsThatStageAndWhatReadsItNothingElse()
    {
        Write();
        Run();
        RunsSince();

        Edit("learning_rate: 0.001", "learning_rate: 0.002");
        var status = new PipelineRunner(FakeStage.All(_counter)).Status(PipelineLoader.Load(_dir.File("pipeline.yaml")));
        Assert.Equal("stages.dpo.learning_rate: 0.001 → 0.002", status.Stages.Single(s => s.Name == "dpo").Reason);
        Run();
        Assert.Equal(["dpo", "eval", "merge", "export"], RunsSince());

        Edit("learning_rate: 0.005", "learning_rate: 0.004");
        Run();
        Assert.Equal(["sft", "dpo", "eval", "merge", "export"], RunsSince());

        Edit("dataset: [answers]", "dataset: [answers, identity]");
        Run();
        Assert.Equal(["pref_register", "pref_split", "dpo", "eval", "merge", "export"], RunsSince());

        Run();
        Assert.Empty(RunsSince());
    }

    [Fact]
    public void RenamingAStageReusesItsOutput()
    {
        Write();
        Run();
        RunsSince();
        Edit("sft: {kind: train", "base: {kind: train");
        Edit("from: [sft, pref_split]", "from: [base, pref_split]");
        var report = Run();
        Assert.Empty(RunsSince());
        Assert.Equal("up to date (output reused from the cache)", report.Stages.Single(s => s.Name == "base").Reason);
        var stages = JsonNode.Parse(File.ReadAllText(_dir.File("pipeline.lock")))!["stages"]!.AsObject();
        Assert.Equal(["download", "register", "pref_register", "split", "pref_split", "base", "dpo", "eval", "merge", "export"], stages.Select(s => s.Key));
    }

    [Fact]
    public void StageOptionTakesAStageName()
    {
        Write();
        var report = Run(new RunOptions { Stage = "dpo" });
        Assert.Equal(["download", "register", "pref_register", "split", "pref_split", "sft", "dpo"], report.Stages.Select(s => s.Name));
        var e = Assert.Throws<PipelineUserException>(() => PipelineRunner.StageNamed(PipelineLoader.Load(_dir.File("pipeline.yaml")), "dpp", "--stage"));
        Assert.Equal($"--stage dpp: no such stage in {_dir.File("pipeline.yaml")}; expected one of download, register, pref_register, split, pref_split, sft, dpo, eval, merge, export; did you mean 'dpo'?", e.Message);
    }

    [Fact]
    public void ATrainStageBuildingOnAnOutputWithoutAdapterOrModelSaysSo()
    {
        var p = Load();
        var dpo = p.Definition.Stages["dpo"]!;
        var upstream = dpo.Reads.ToDictionary(r => r.Key, r => _dir.File(r.Value));
        var ctx = new StageContext(p.Definition, p.Directory, upstream, _dir.File("out"), new NullStageProgress(), CancellationToken.None) { Stage = dpo };
        var e = Assert.Throws<PipelineUserException>(() => new TrainStage().Execute(ctx));
        Assert.Equal($"stages.dpo.from: sft's output {_dir.File("sft")} holds neither an adapter nor a model; re-run it.", e.Message);
    }

    [Fact]
    public void ARegisterStageReadsItsOwnDatasets()
    {
        Write();
        var report = new PipelineRunner([new RegisterStage()]).Run(PipelineLoader.Load(_dir.File("pipeline.yaml")),
            new RunOptions { Stage = "pref_register" }, new NullStageProgress(), CancellationToken.None);
        var output = report.Stages.Single(s => s.Name == "pref_register").OutputDirectory!;
        var conversations = File.ReadAllText(new RegisterOutput(output).Conversations);
        Assert.Contains("2+2?", conversations);
        Assert.DoesNotContain("I am", conversations);
        Assert.Equal(1, report.Stages.Single(s => s.Name == "pref_register").Metrics!["samples"]);
    }
}
