namespace FineTune.Models.Hub;

public enum HubErrorKind
{
    /// <summary>401: no token, a wrong token, or a private repository.</summary>
    Unauthorized,
    /// <summary>403 or X-Error-Code GatedRepo: the licence must be accepted on the model page.</summary>
    Gated,
    /// <summary>404: repository, revision or file does not exist.</summary>
    NotFound,
    /// <summary>The endpoint could not be reached or the connection broke; partial files are kept for resume.</summary>
    Network,
    /// <summary>A downloaded or stored file does not match the size or hash the hub lists (it was removed), or a stored listing is damaged.</summary>
    Integrity,
    /// <summary>Not enough disk space; partial files are kept.</summary>
    DiskFull,
    /// <summary>HF_HUB_OFFLINE is set and the model was never downloaded here.</summary>
    Offline,
    /// <summary>Any other answer of the hub (5xx, malformed JSON, a listing with wrong types or paths outside the repository).</summary>
    Server,
}

/// <summary>A hub download problem, with a message that says what to do.</summary>
public sealed class HubException(HubErrorKind kind, string message, Exception? inner = null) : Exception(message, inner)
{
    public HubErrorKind Kind { get; } = kind;
}
