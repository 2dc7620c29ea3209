using System.Text.Json.Nodes;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Board;

/// <summary>
/// Stage outputs as the Artifacts page lists them (adapter, merged model, GGUF + Modelfile: every file with its size and
/// SHA-256 from the cache manifest) and the one way to download them: a file of an up-to-date stage's cached output,
/// named as its manifest names it — no path a request makes up reaches the disk.
/// </summary>
public static class Artifacts
{
    public static JsonObject List(string pipelineFile)
    {
        var loaded = PipelineLoader.Load(pipelineFile);
        var stages = new JsonArray();
        foreach (var (outcome, manifest) in Outputs(loaded))
        {
            var files = new JsonArray(manifest.Files.OrderBy(f => f.Path, StringComparer.Ordinal).Select(f => (JsonNode)new JsonObject
            {
                ["path"] = f.Path, ["size"] = f.Size, ["sha256"] = f.Sha256, ["report"] = manifest.Reports?.Contains(f.Path) ?? false,
            }).ToArray());
            stages.Add(new JsonObject
            {
                ["stage"] = outcome.Name, ["kind"] = manifest.Kind, ["output_hash"] = manifest.OutputHash, ["directory"] = outcome.OutputDirectory,
                ["bytes"] = manifest.Files.Sum(f => f.Size), ["files"] = files,
            });
        }
        return new JsonObject { ["stages"] = stages };
    }

    /// <summary>The absolute path of <paramref name="relative"/> in stage <paramref name="stage"/>'s output, when its manifest lists that file; else null.</summary>
    public static string? Find(string pipelineFile, string stage, string relative)
    {
        var loaded = PipelineLoader.Load(pipelineFile);
        foreach (var (outcome, manifest) in Outputs(loaded))
        {
            if (outcome.Name != stage) continue;
            if (!manifest.Files.Any(f => f.Path == relative)) return null;
            var root = Path.GetFullPath(outcome.OutputDirectory!) + Path.DirectorySeparatorChar;
            var full = Path.GetFullPath(Path.Combine(root, relative));
            // Belt and braces: the manifest names files inside the output; never serve one that resolves elsewhere.
            return full.StartsWith(root, StringComparison.Ordinal) && File.Exists(full) && !new FileInfo(full).Attributes.HasFlag(FileAttributes.ReparsePoint) ? full : null;
        }
        return null;
    }

    private static IEnumerable<(StageOutcome Outcome, CacheManifest Manifest)> Outputs(LoadedPipeline loaded)
    {
        var cache = StageCache.Beside(loaded.Directory);
        var hasher = new ContentHasher(cache.IndexPath, trustIndex: true);
        foreach (var s in PipelineRunner.CreateDefault().Status(loaded).Stages)
        {
            if (s is not { State: StageState.UpToDate, Fingerprint: { } fp }) continue;
            if (cache.Check(fp, hasher) is { Valid: true, Manifest: { } m }) yield return (s, m);
        }
    }
}
