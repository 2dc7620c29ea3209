using System.Text.Json.Nodes;

namespace FineTune.Serving;

/// <summary>
/// A request the server refuses, answered with OpenAI's error body
/// <c>{"error": {"message", "type", "param", "code"}}</c> and an HTTP status.
/// </summary>
internal sealed class OpenAiError(int status, string message, string type = "invalid_request_error", string? param = null, string? code = null)
    : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    public JsonObject Body() => new()
    {
        ["error"] = new JsonObject
        {
            ["message"] = Message,
            ["type"] = Type,
            ["param"] = Param,
            ["code"] = Code,
        },
    };

    public static OpenAiError BadRequest(string message, string? param = null, string? code = null) => new(400, message, param: param, code: code);
}
