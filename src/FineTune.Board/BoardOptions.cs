using System.Net;
using FineTune.Pipeline;

namespace FineTune.Board;

/// <summary>`finetune board`'s settings.</summary>
public sealed record BoardOptions
{
    /// <summary>The directory whose <c>pipelines/*/pipeline.yaml</c> the board shows (a checkout's root).</summary>
    public required string Root { get; init; }
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 picks a free port (the bound address is printed).</summary>
    public int Port { get; init; } = 7860;
    /// <summary>When set, every request needs it (Authorization: Bearer, the board's cookie, or ?token= once).</summary>
    public string? Token { get; init; }
    /// <summary>Device for chat models (auto, cpu, cuda[:N]).</summary>
    public string Device { get; init; } = "auto";

    /// <summary>True for 127.0.0.1, ::1 and localhost: the only hosts the board may bind without a token.</summary>
    public bool IsLoopback => Host == "localhost" || (IPAddress.TryParse(Host, out var ip) && IPAddress.IsLoopback(ip));

    /// <summary>Throws the user's error for settings the board refuses to start with.</summary>
    public void Check()
    {
        if (!Directory.Exists(Root))
            throw new PipelineUserException($"--root {Root}: no such directory; pass the checkout whose pipelines/*/pipeline.yaml the board shows.");
        if (Port is < 0 or > 65535)
            throw new PipelineUserException($"--port {Port}: must be in 0–65535.");
        if (Host != "localhost" && !IPAddress.TryParse(Host, out _))
            throw new PipelineUserException($"--host {Host}: not an IP address; use 127.0.0.1 (the default), 0.0.0.0, ::, or localhost.");
        if (!IsLoopback && string.IsNullOrEmpty(Token))
            throw new PipelineUserException($"--host {Host}: the board starts and stops runs and edits pipelines, so any host but 127.0.0.1 needs a token: " +
                "pass --token T (or set FINETUNE_BOARD_TOKEN) and open the board as http://HOST:PORT/?token=T.");
    }
}
