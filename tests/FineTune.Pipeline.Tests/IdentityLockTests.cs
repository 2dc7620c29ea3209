using System.Text.Json.Nodes;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// pipelines/identity/pipeline.lock, which CI reproduces byte for byte: every stage's parameters and fingerprint as this
/// FineTune computes them from the pipeline file (with the upstream output hashes and input hashes the lock records), and
/// the lock's own bytes through a read and a write.
/// </summary>
public sealed class IdentityLockTests
{
    private static string Dir => Path.Combine(RepoRoot.Path, "pipelines", "identity");

    [Fact]
    public void EveryStagesParametersAndFingerprintAreTheLockedOnes()
    {
        var p = PipelineLoader.Load(Dir);
        var locked = JsonNode.Parse(File.ReadAllText(Path.Combine(Dir, LockFile.FileName)))!["stages"]!.AsObject();
        var executors = StageRegistry.CreateDefault().ToDictionary(e => e.Kind);
        Assert.Equal(locked.Select(s => s.Key), p.Stages.Select(s => s.Name));
        foreach (var stage in p.Stages)
        {
            var entry = locked[stage.Name]!.AsObject();
            var parameters = StageFingerprint.ParametersOf(stage, p.Definition);
            Assert.Equal(CanonicalJson.Serialize(entry["params"]), CanonicalJson.Serialize(parameters));
            var upstream = stage.Reads.ToDictionary(r => r.Key, r => entry["upstream"]![r.Value]!.GetValue<string>());
            var ctx = new StageContext(p.Definition, p.Directory, new Dictionary<StageKind, string>(), "", new NullStageProgress(), CancellationToken.None) { Stage = stage };
            var inputs = executors[stage.Kind].ExternalInputs(ctx).Select(i => ("", new ContentHasher(null).HashPath(Path.GetFullPath(i, p.Directory)))).ToList();
            Assert.Equal(entry["fingerprint"]!.GetValue<string>(), new StageFingerprint(stage.Kind, parameters, upstream, inputs).Hash);
        }
    }

    [Fact]
    public void TheLockReadsAndWritesBackByteForByte()
    {
        var path = Path.Combine(Dir, LockFile.FileName);
        Assert.Equal(File.ReadAllText(path), LockFile.Read(path).Serialize());
    }
}
