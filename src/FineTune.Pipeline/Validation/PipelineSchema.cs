using System.Globalization;
using FineTune.Pipeline.Config;
using NJsonSchema;

namespace FineTune.Pipeline.Validation;

/// <summary>
/// Generates schemas/pipeline.schema.json from the configuration records (<see cref="ConfigModel"/>), so the
/// schema editors use and the C# binder cannot disagree. Regenerate with <c>finetune schema -o schemas/pipeline.schema.json</c>.
/// </summary>
public static class PipelineSchema
{
    public const string SchemaId = "https://finetune.dev/schemas/pipeline.schema.json";

    public static JsonSchema Generate()
    {
        var root = ObjectSchema(typeof(PipelineDefinition), new JsonSchema());
        root.Title = "FineTune pipeline";
        return root;
    }

    /// <summary>The schema as the checked-in file holds it (LF line endings, trailing newline).</summary>
    public static string GenerateJson()
    {
        // NJsonSchema 10 writes draft-04 headers; the document uses draft-07 keywords (numeric exclusiveMinimum).
        var json = Generate().ToJson().Replace("\r\n", "\n");
        json = json.Replace("\"$schema\": \"http://json-schema.org/draft-04/schema#\",", $"\"$schema\": \"http://json-schema.org/draft-07/schema#\",\n  \"$id\": \"{SchemaId}\",");
        return json + "\n";
    }

    private static JsonSchema ObjectSchema(Type type, JsonSchema schema)
    {
        schema.Type = JsonObjectType.Object;
        schema.AllowAdditionalProperties = false;
        schema.Description ??= ConfigModel.Keys(type).Count == 0 ? null : TypeDescription(type);
        var defaults = Activator.CreateInstance(type)!;
        foreach (var key in ConfigModel.Keys(type))
        {
            var p = new JsonSchemaProperty { Description = key.Description };
            Fill(p, key, key.Property.GetValue(defaults));
            schema.Properties[key.Name] = p;
            if (key.Required)
                schema.RequiredProperties.Add(key.Name);
        }
        if (type == typeof(StagesSection))
            AddNamedStages(schema);
        return schema;
    }

    /// <summary>
    /// <c>stages</c>: the kind-named keys (each also takes <c>kind</c>, its own name, and <c>from</c>) and, under any other
    /// name of the stage-name form, a block whose <c>kind</c> picks which kind's keys it takes (one alternative per kind).
    /// </summary>
    private static void AddNamedStages(JsonSchema stages)
    {
        foreach (var d in StageTable.All)
            AddStructure(stages.Properties[d.Name], d, required: false);
        var kinds = string.Join("|", StageTable.All.Select(d => d.Name));
        var named = new JsonSchemaProperty
        {
            Description = "A stage under its own name; kind: says which kind it is (and so which keys it takes), from: which stages it reads.",
        };
        foreach (var d in StageTable.All)
        {
            var alternative = ObjectSchema(d.Block, new JsonSchema());
            AddStructure(alternative, d, required: true);
            named.OneOf.Add(alternative);
        }
        // The kind names are the properties above; a pattern property would apply to them too, so it leaves them out.
        stages.PatternProperties[$"^(?!({kinds})$)[a-z][a-z0-9_]*$"] = named;
    }

    private static void AddStructure(JsonSchema block, StageDescription d, bool required)
    {
        var kind = new JsonSchemaProperty { Type = JsonObjectType.String, Description = required
            ? "The stage's kind."
            : $"The stage's kind; under the name {d.Name} it can only be {d.Name}." };
        kind.Enumeration.Add(d.Name);
        block.Properties[StageKeys.Kind] = kind;
        block.Properties[StageKeys.From] = new JsonSchemaProperty
        {
            Type = JsonObjectType.String | JsonObjectType.Array,
            Item = new JsonSchema { Type = JsonObjectType.String },
            Description = "The stages it reads, by name (one or a list): needed where the pipeline has several stages of a kind it reads; a train stage naming an earlier train stage builds on its model.",
        };
        if (required)
            block.RequiredProperties.Add(StageKeys.Kind);
    }

    private static string? TypeDescription(Type type) =>
        (type.GetCustomAttributes(typeof(System.ComponentModel.DescriptionAttribute), false).FirstOrDefault()
            as System.ComponentModel.DescriptionAttribute)?.Description;

    private static void Fill(JsonSchemaProperty p, ConfigKey key, object? defaultValue)
    {
        switch (key.Kind)
        {
            case ValueKind.Object:
                ObjectSchema(key.ObjectType!, p);
                // An empty block (`merge:`) is YAML null and means "present, all defaults".
                p.Type = key.Required ? JsonObjectType.Object : JsonObjectType.Object | JsonObjectType.Null;
                return;
            case ValueKind.String:
                p.Type = JsonObjectType.String;
                p.Pattern = key.Pattern;
                break;
            case ValueKind.Integer:
                p.Type = JsonObjectType.Integer;
                break;
            case ValueKind.Number:
                p.Type = JsonObjectType.Number;
                break;
            case ValueKind.Boolean:
                p.Type = JsonObjectType.Boolean;
                break;
            case ValueKind.Enum when key.EnumNames.Contains("true") && key.EnumNames.Contains("false"):
                // true and false are YAML booleans (an editor sends them as such); the other values are strings.
                p.AnyOf.Add(new JsonSchema { Type = JsonObjectType.Boolean });
                var rest = new JsonSchema { Type = JsonObjectType.String };
                foreach (var n in key.EnumNames.Where(n => n is not ("true" or "false"))) rest.Enumeration.Add(n);
                p.AnyOf.Add(rest);
                break;
            case ValueKind.Enum:
                p.Type = JsonObjectType.String;
                foreach (var n in key.EnumNames) p.Enumeration.Add(n);
                break;
            case ValueKind.StringList:
                p.Type = key.ScalarOrList ? JsonObjectType.Array | JsonObjectType.String : JsonObjectType.Array;
                p.Item = new JsonSchema { Type = JsonObjectType.String };
                break;
            case ValueKind.EnumList:
                var item = new JsonSchema { Type = JsonObjectType.String };
                foreach (var n in key.EnumNames) item.Enumeration.Add(n);
                if (key.ScalarOrList)
                {
                    // One name, or a list of names.
                    var one = new JsonSchema { Type = JsonObjectType.String };
                    foreach (var n in key.EnumNames) one.Enumeration.Add(n);
                    p.AnyOf.Add(one);
                    p.AnyOf.Add(new JsonSchema { Type = JsonObjectType.Array, Item = item });
                    break;
                }
                p.Type = JsonObjectType.Array;
                p.Item = item;
                break;
            case ValueKind.StringMap:
                p.Type = JsonObjectType.Object;
                p.AdditionalPropertiesSchema = new JsonSchema { Type = JsonObjectType.String };
                break;
        }
        if (key.Nullable)
            p.Type |= JsonObjectType.Null;
        if (key.Range is { } r)
        {
            var min = Convert.ToDecimal(Convert.ToDouble(r.Minimum, CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
            var maxD = Convert.ToDouble(r.Maximum, CultureInfo.InvariantCulture);
            if (r.MinimumIsExclusive) p.ExclusiveMinimum = min; else p.Minimum = min;
            if (maxD < int.MaxValue)
            {
                var max = Convert.ToDecimal(maxD, CultureInfo.InvariantCulture);
                if (r.MaximumIsExclusive) p.ExclusiveMaximum = max; else p.Maximum = max;
            }
        }
        p.Default = key.Required ? null : defaultValue switch
        {
            System.Collections.IList { Count: 1 } one when key.FingerprintOneAsScalar => one[0] is Enum e1 ? ConfigModel.EnumName(e1) : one[0],
            null => null,
            Enum e => ConfigModel.EnumName(e),
            IReadOnlyList<string> l => l.ToArray(),
            System.Collections.IEnumerable l when defaultValue is not string => l.Cast<object>().Select(o => o is Enum e2 ? ConfigModel.EnumName(e2) : o).ToArray(),
            _ => defaultValue,
        };
        if (p.Default is System.Collections.ICollection { Count: 0 } && key.Kind == ValueKind.StringMap)
            p.Default = null;
    }
}
