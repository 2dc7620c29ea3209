using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace FineTune.Pipeline.Tests.Tracking;

/// <summary>
/// A stand-in for an MLflow tracking server, not MLflow itself: an HttpListener on 127.0.0.1 that answers the REST API
/// 2.0 endpoints FineTune calls — experiments/get-by-name (404 RESOURCE_DOES_NOT_EXIST until created),
/// experiments/create, runs/create, runs/log-batch, runs/update, and PUT mlflow-artifacts/artifacts/… — with the fields
/// MLflow answers, and records every request (method, path, JSON body or artifact bytes) for the tests to assert on.
/// </summary>
public sealed class StandInMlflowServer : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly Task _loop;
    private readonly ConcurrentDictionary<string, string> _experiments = new();

    public sealed record Request(string Method, string Path, JsonNode? Body, byte[] Bytes);

    public StandInMlflowServer(string? artifactUri = null)
    {
        ArtifactUri = artifactUri;
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        Endpoint = $"http://127.0.0.1:{port}";
        _listener.Prefixes.Add(Endpoint + "/");
        _listener.Start();
        _loop = Task.Run(Serve);
    }

    public string Endpoint { get; }

    /// <summary>What runs/create answers as the run's artifact_uri; null: mlflow-artifacts:/&lt;experiment&gt;/&lt;run&gt;/artifacts.</summary>
    public string? ArtifactUri { get; }

    public ConcurrentQueue<Request> Requests { get; } = new();

    /// <summary>"POST runs/create", … in order (the mlflow-artifacts PUTs as "PUT artifacts/&lt;path&gt;").</summary>
    public IReadOnlyList<string> Calls => Requests.Select(r => $"{r.Method} {r.Path.Replace("/api/2.0/mlflow/", "").Replace("/api/2.0/mlflow-artifacts/", "")}").ToList();

    private async Task Serve()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext ctx;
            try { ctx = await _listener.GetContextAsync(); }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException) { return; }
            try { Answer(ctx); }
            catch (Exception e) { Respond(ctx, 500, new JsonObject { ["error_code"] = "INTERNAL_ERROR", ["message"] = e.Message }); }
        }
    }

    private void Answer(HttpListenerContext ctx)
    {
        using var ms = new MemoryStream();
        ctx.Request.InputStream.CopyTo(ms);
        var bytes = ms.ToArray();
        var path = ctx.Request.Url!.AbsolutePath;
        var isJson = ctx.Request.ContentType?.StartsWith("application/json", StringComparison.Ordinal) == true && bytes.Length > 0;
        var body = isJson ? JsonNode.Parse(bytes) : null;
        Requests.Enqueue(new Request(ctx.Request.HttpMethod, path, body, bytes));
        switch (ctx.Request.HttpMethod, path)
        {
            case ("GET", "/api/2.0/mlflow/experiments/get-by-name"):
                var name = ctx.Request.QueryString["experiment_name"] ?? "";
                if (_experiments.TryGetValue(name, out var id))
                    Respond(ctx, 200, new JsonObject { ["experiment"] = new JsonObject { ["experiment_id"] = id, ["name"] = name } });
                else
                    Respond(ctx, 404, new JsonObject { ["error_code"] = "RESOURCE_DOES_NOT_EXIST", ["message"] = $"Could not find experiment with name '{name}'" });
                return;
            case ("POST", "/api/2.0/mlflow/experiments/create"):
                var created = (_experiments.Count + 1).ToString();
                _experiments[body!["name"]!.GetValue<string>()] = created;
                Respond(ctx, 200, new JsonObject { ["experiment_id"] = created });
                return;
            case ("POST", "/api/2.0/mlflow/runs/create"):
                var exp = body!["experiment_id"]!.GetValue<string>();
                var run = $"run{Requests.Count(r => r.Path.EndsWith("runs/create", StringComparison.Ordinal))}";
                Respond(ctx, 200, new JsonObject
                {
                    ["run"] = new JsonObject
                    {
                        ["info"] = new JsonObject
                        {
                            ["run_id"] = run, ["experiment_id"] = exp, ["status"] = "RUNNING",
                            ["artifact_uri"] = ArtifactUri ?? $"mlflow-artifacts:/{exp}/{run}/artifacts",
                        },
                    },
                });
                return;
            case ("POST", "/api/2.0/mlflow/runs/log-batch"):
                Respond(ctx, 200, new JsonObject());
                return;
            case ("POST", "/api/2.0/mlflow/runs/update"):
                Respond(ctx, 200, new JsonObject { ["run_info"] = new JsonObject { ["run_id"] = body!["run_id"]!.DeepClone(), ["status"] = body["status"]!.DeepClone() } });
                return;
            case ("PUT", _) when path.StartsWith("/api/2.0/mlflow-artifacts/artifacts/", StringComparison.Ordinal):
                Respond(ctx, 200, new JsonObject());
                return;
            default:
                Respond(ctx, 404, new JsonObject { ["error_code"] = "ENDPOINT_NOT_FOUND", ["message"] = $"{ctx.Request.HttpMethod} {path}" });
                return;
        }
    }

    private static void Respond(HttpListenerContext ctx, int status, JsonNode body)
    {
        var bytes = Encoding.UTF8.GetBytes(body.ToJsonString());
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        ctx.Response.ContentLength64 = bytes.Length;
        ctx.Response.OutputStream.Write(bytes);
        ctx.Response.Close();
    }

    public void Dispose()
    {
        // Close alone: after Stop, Close removes the prefix again and HttpListener re-binds the port to do it, which fails
        // with "Address already in use" when another test process took the freed port in between (seen in CI, where the
        // test projects run in parallel); a listener that cannot be re-bound has nothing left to release.
        try { _listener.Close(); }
        catch (HttpListenerException) { }
        try { _loop.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
    }
}
