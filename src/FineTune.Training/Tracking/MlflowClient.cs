using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;

namespace FineTune.Training.Tracking;

/// <summary>The MLflow tracking server answered an error, or could not be reached.</summary>
public sealed class MlflowException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A run as runs/create returned it.</summary>
public sealed record MlflowRun(string RunId, string ExperimentId, string ArtifactUri);

/// <summary>One metric value of a run at a step (timestamp in ms since the Unix epoch).</summary>
public sealed record MlflowMetric(string Key, double Value, long Timestamp, long Step);

/// <summary>
/// A client of MLflow's REST API 2.0 (<c>MLFLOW_TRACKING_URI</c>, http or https), over HttpClient: experiments/get-by-name
/// and experiments/create, runs/create, runs/log-batch (split at the API's per-request limits), runs/update, and artifact
/// upload through the tracking server's proxy (<c>PUT /api/2.0/mlflow-artifacts/artifacts/…</c>) when the run's
/// artifact_uri is an <c>mlflow-artifacts:</c> one. Authentication as MLflow's own client reads it:
/// <c>MLFLOW_TRACKING_TOKEN</c> (bearer) or <c>MLFLOW_TRACKING_USERNAME</c>/<c>MLFLOW_TRACKING_PASSWORD</c> (basic).
/// </summary>
public sealed class MlflowClient : IDisposable
{
    public const string UriVariable = "MLFLOW_TRACKING_URI";

    // runs/log-batch accepts at most 1000 metrics, 100 params and 100 tags per request, 1000 entities in all.
    private const int MaxMetrics = 1000, MaxParams = 100, MaxTags = 100;
    /// <summary>MLflow stores a param value of at most 6000 characters.</summary>
    public const int MaxParamLength = 6000;

    private readonly HttpClient _http;
    private readonly Uri _base;

    public MlflowClient(Uri trackingUri, string? token = null, string? user = null, string? password = null)
    {
        _base = new Uri(trackingUri.ToString().TrimEnd('/') + "/");
        _http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        if (!string.IsNullOrEmpty(token))
            _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        else if (!string.IsNullOrEmpty(user))
            _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic",
                Convert.ToBase64String(Encoding.UTF8.GetBytes($"{user}:{password}")));
    }

    public Uri TrackingUri => _base;

    /// <summary>The id of the experiment of this name, created when the server has none.</summary>
    public string ExperimentId(string name)
    {
        var (status, body) = Send(HttpMethod.Get, "api/2.0/mlflow/experiments/get-by-name?experiment_name=" + Uri.EscapeDataString(name), null, allowNotFound: true);
        if (status != HttpStatusCode.NotFound)
            return body?["experiment"]?["experiment_id"]?.GetValue<string>() ?? throw Malformed("experiments/get-by-name", "experiment.experiment_id");
        var (_, created) = Send(HttpMethod.Post, "api/2.0/mlflow/experiments/create", new JsonObject { ["name"] = name });
        return created?["experiment_id"]?.GetValue<string>() ?? throw Malformed("experiments/create", "experiment_id");
    }

    public MlflowRun CreateRun(string experimentId, string runName, DateTimeOffset start, IReadOnlyDictionary<string, string> tags)
    {
        var (_, body) = Send(HttpMethod.Post, "api/2.0/mlflow/runs/create", new JsonObject
        {
            ["experiment_id"] = experimentId,
            ["run_name"] = runName,
            ["start_time"] = start.ToUnixTimeMilliseconds(),
            ["tags"] = Pairs(tags),
        });
        var info = body?["run"]?["info"] ?? throw Malformed("runs/create", "run.info");
        return new MlflowRun(
            info["run_id"]?.GetValue<string>() ?? throw Malformed("runs/create", "run.info.run_id"),
            info["experiment_id"]?.GetValue<string>() ?? experimentId,
            info["artifact_uri"]?.GetValue<string>() ?? "");
    }

    /// <summary>Logs everything in as few runs/log-batch requests as the API's limits allow (params and tags first).</summary>
    public void LogBatch(string runId, IReadOnlyList<MlflowMetric> metrics, IReadOnlyDictionary<string, string> parameters, IReadOnlyDictionary<string, string> tags)
    {
        var ps = parameters.OrderBy(p => p.Key, StringComparer.Ordinal).ToList();
        var ts = tags.OrderBy(t => t.Key, StringComparer.Ordinal).ToList();
        var ms = metrics.Where(m => double.IsFinite(m.Value)).ToList();
        int pi = 0, ti = 0, mi = 0;
        while (pi < ps.Count || ti < ts.Count || mi < ms.Count)
        {
            var p = ps.Skip(pi).Take(MaxParams).ToList();
            var t = ts.Skip(ti).Take(MaxTags).ToList();
            var m = ms.Skip(mi).Take(MaxMetrics - p.Count - t.Count).ToList();
            pi += p.Count; ti += t.Count; mi += m.Count;
            Send(HttpMethod.Post, "api/2.0/mlflow/runs/log-batch", new JsonObject
            {
                ["run_id"] = runId,
                ["metrics"] = new JsonArray(m.Select(x => (JsonNode)new JsonObject
                {
                    ["key"] = x.Key, ["value"] = x.Value, ["timestamp"] = x.Timestamp, ["step"] = x.Step,
                }).ToArray()),
                ["params"] = Pairs(p.ToDictionary(x => x.Key, x => x.Value.Length > MaxParamLength ? x.Value[..MaxParamLength] : x.Value)),
                ["tags"] = Pairs(t.ToDictionary()),
            });
        }
    }

    /// <param name="status">FINISHED, FAILED or KILLED.</param>
    public void UpdateRun(string runId, string status, DateTimeOffset end) =>
        Send(HttpMethod.Post, "api/2.0/mlflow/runs/update", new JsonObject
        {
            ["run_id"] = runId, ["status"] = status, ["end_time"] = end.ToUnixTimeMilliseconds(),
        });

    /// <summary>
    /// Uploads a file under the run's artifacts through the server's artifact proxy; false (nothing sent) when the run's
    /// artifact_uri is not <c>mlflow-artifacts:</c> (the server then wants its client to write to S3, a file store… directly).
    /// </summary>
    public bool UploadArtifact(MlflowRun run, string artifactPath, string file)
    {
        if (ProxiedArtifactPath(run.ArtifactUri) is not { } root) return false;
        var path = string.Join('/', (root.TrimEnd('/') + "/" + artifactPath.Replace('\\', '/')).Split('/', StringSplitOptions.RemoveEmptyEntries).Select(Uri.EscapeDataString));
        using var request = new HttpRequestMessage(HttpMethod.Put, new Uri(_base, "api/2.0/mlflow-artifacts/artifacts/" + path))
        {
            Content = new ByteArrayContent(File.ReadAllBytes(file)),
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        Send(request, "mlflow-artifacts/artifacts", allowNotFound: false);
        return true;
    }

    /// <summary>"mlflow-artifacts:/1/abc/artifacts" or "mlflow-artifacts://host:5000/1/abc/artifacts" → "1/abc/artifacts"; else null.</summary>
    public static string? ProxiedArtifactPath(string artifactUri)
    {
        const string scheme = "mlflow-artifacts:";
        if (!artifactUri.StartsWith(scheme, StringComparison.Ordinal)) return null;
        var rest = artifactUri[scheme.Length..];
        if (rest.StartsWith("//", StringComparison.Ordinal))
        {
            var slash = rest.IndexOf('/', 2);
            rest = slash < 0 ? "" : rest[slash..];
        }
        return rest.TrimStart('/');
    }

    private static JsonArray Pairs(IReadOnlyDictionary<string, string> map) =>
        new(map.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => (JsonNode)new JsonObject { ["key"] = kv.Key, ["value"] = kv.Value }).ToArray());

    private MlflowException Malformed(string endpoint, string field) =>
        new($"{_base}api/2.0/mlflow/{endpoint}: the answer has no {field}; is {UriVariable} an MLflow tracking server?");

    private (HttpStatusCode Status, JsonNode? Body) Send(HttpMethod method, string relative, JsonObject? body, bool allowNotFound = false)
    {
        using var request = new HttpRequestMessage(method, new Uri(_base, relative));
        if (body is not null)
            request.Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json");
        return Send(request, relative.Split('?')[0].Replace("api/2.0/mlflow/", ""), allowNotFound);
    }

    private (HttpStatusCode Status, JsonNode? Body) Send(HttpRequestMessage request, string endpoint, bool allowNotFound)
    {
        HttpResponseMessage response;
        try { response = _http.Send(request); }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            throw new MlflowException($"{request.RequestUri}: the MLflow server did not answer ({e.Message})", e);
        }
        using (response)
        {
            using var reader = new StreamReader(response.Content.ReadAsStream());
            var text = reader.ReadToEnd();
            if (allowNotFound && response.StatusCode == HttpStatusCode.NotFound) return (response.StatusCode, null);
            if (!response.IsSuccessStatusCode)
                throw new MlflowException($"{request.RequestUri}: {endpoint} answered {(int)response.StatusCode} {response.ReasonPhrase}: {Shorten(text)}");
            try { return (response.StatusCode, text.Length == 0 ? null : JsonNode.Parse(text)); }
            catch (System.Text.Json.JsonException)
            {
                throw new MlflowException($"{request.RequestUri}: {endpoint} answered something that is not JSON: {Shorten(text)}");
            }
        }
    }

    private static string Shorten(string s) => s.Length > 300 ? s[..300] + "…" : s;

    public void Dispose() => _http.Dispose();
}
