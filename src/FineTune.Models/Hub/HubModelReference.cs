namespace FineTune.Models.Hub;

/// <summary><c>hf://org/name[@revision]</c>: a model repository on the Hugging Face Hub and a branch, tag or commit.</summary>
public sealed record HubModelReference(string RepoId, string Revision)
{
    public const string Scheme = "hf://";

    public static bool IsHubSource(string source) => source.StartsWith(Scheme, StringComparison.Ordinal);

    /// <summary>Parses <c>hf://org/name[@revision]</c>; the revision defaults to main (or <paramref name="revisionOverride"/>).</summary>
    public static HubModelReference Parse(string source, string? revisionOverride = null)
    {
        if (!IsHubSource(source))
            throw new ArgumentException($"\"{source}\" is not a hub source; write hf://org/name or hf://org/name@revision.");
        var rest = source[Scheme.Length..];
        string? revision = null;
        int at = rest.IndexOf('@');
        if (at >= 0)
        {
            revision = rest[(at + 1)..];
            rest = rest[..at];
        }
        var parts = rest.Split('/');
        if (parts.Length != 2 || parts.Any(p => p.Length == 0 || p is "." or ".." || p.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))))
            throw new ArgumentException($"\"{source}\" is not a hub source; write hf://org/name or hf://org/name@revision (letters, digits, '-', '_', '.').");
        if (revision is not null && revision.Length == 0)
            throw new ArgumentException($"\"{source}\" has an empty revision after '@'; name a branch, tag or commit.");
        return new HubModelReference(rest, revisionOverride ?? revision ?? "main");
    }

    /// <summary>A 40-hex-digit commit id: immutable, so a stored snapshot never needs the network.</summary>
    public bool RevisionIsCommit => Revision.Length == 40 && Revision.All(char.IsAsciiHexDigitLower);

    public override string ToString() => $"{Scheme}{RepoId}@{Revision}";
}

/// <summary>A file of a repository at a commit, with what the hub says about its content.</summary>
/// <param name="Path">Path inside the repository ("config.json", "model-00001-of-00002.safetensors").</param>
/// <param name="Size">Bytes, when the hub lists it.</param>
/// <param name="Sha256">LFS files: the SHA-256 of the content.</param>
/// <param name="BlobId">Git blob id (SHA-1 of "blob {size}\0" + content) for files kept in git.</param>
public sealed record HubFile(string Path, long? Size, string? Sha256, string? BlobId);

/// <summary>A repository resolved to a commit, with its files.</summary>
public sealed record HubSnapshot(string RepoId, string Commit, IReadOnlyList<HubFile> Files);
