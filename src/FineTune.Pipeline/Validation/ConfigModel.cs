using System.Collections.Concurrent;
using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Reflection;
using System.Text;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Validation;

/// <summary>What a key holds.</summary>
public enum ValueKind { String, Integer, Number, Boolean, Enum, StringList, EnumList, StringMap, Object }

/// <summary>One key of a configuration record, read from the C# property and its attributes. The binder, the
/// JSON Schema generator and the fingerprint all use this one description.</summary>
public sealed record ConfigKey(
    string Name,
    PropertyInfo Property,
    ValueKind Kind,
    bool Nullable,
    bool Required,
    bool ScalarOrList,
    bool FingerprintOneAsScalar,
    bool Fingerprinted,
    bool OmittedWhenUnset,
    Type? EnumType,
    Type? ObjectType,
    RangeAttribute? Range,
    string? Pattern,
    string? Description)
{
    public IReadOnlyList<string> EnumNames => EnumType is null ? [] : ConfigModel.EnumNames(EnumType);
}

/// <summary>Reflection over the configuration records (cached per type; immutable once built).</summary>
public static class ConfigModel
{
    private static readonly ConcurrentDictionary<Type, IReadOnlyList<ConfigKey>> KeysCache = new();

    public static IReadOnlyList<ConfigKey> Keys(Type recordType) => KeysCache.GetOrAdd(recordType, Build);

    public static string SnakeCase(string pascal)
    {
        var sb = new StringBuilder(pascal.Length + 8);
        for (var i = 0; i < pascal.Length; i++)
        {
            var c = pascal[i];
            if (char.IsUpper(c) && i > 0 && (char.IsLower(pascal[i - 1]) || char.IsDigit(pascal[i - 1])))
                sb.Append('_');
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    public static IReadOnlyList<string> EnumNames(Type enumType) =>
        enumType.GetFields(BindingFlags.Public | BindingFlags.Static).Select(EnumName).ToArray();

    public static string EnumName(FieldInfo field) =>
        field.GetCustomAttribute<YamlNameAttribute>()?.Name ?? SnakeCase(field.Name);

    public static string EnumName(object value)
    {
        var field = value.GetType().GetField(value.ToString()!, BindingFlags.Public | BindingFlags.Static)!;
        return EnumName(field);
    }

    public static object? ParseEnum(Type enumType, string text)
    {
        foreach (var field in enumType.GetFields(BindingFlags.Public | BindingFlags.Static))
            if (EnumName(field) == text)
                return field.GetValue(null);
        return null;
    }

    private static List<ConfigKey> Build(Type type)
    {
        var nullability = new NullabilityInfoContext();
        var keys = new List<ConfigKey>();
        foreach (var p in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (p.SetMethod is null || !p.SetMethod.IsPublic)
                continue; // computed properties (ResolvedLoraAlpha, IsScratch) are not keys
            var name = p.GetCustomAttribute<YamlNameAttribute>()?.Name ?? SnakeCase(p.Name);
            var nullable = nullability.Create(p).WriteState == NullabilityState.Nullable;
            var t = System.Nullable.GetUnderlyingType(p.PropertyType) ?? p.PropertyType;
            ValueKind kind;
            Type? enumType = null, objectType = null;
            if (t == typeof(string)) kind = ValueKind.String;
            else if (t == typeof(int)) kind = ValueKind.Integer;
            else if (t == typeof(double)) kind = ValueKind.Number;
            else if (t == typeof(bool)) kind = ValueKind.Boolean;
            else if (t.IsEnum) { kind = ValueKind.Enum; enumType = t; }
            else if (t == typeof(IReadOnlyList<string>)) kind = ValueKind.StringList;
            else if (t.IsGenericType && t.GetGenericTypeDefinition() == typeof(IReadOnlyList<>) && t.GetGenericArguments()[0].IsEnum)
            { kind = ValueKind.EnumList; enumType = t.GetGenericArguments()[0]; }
            else if (t == typeof(IReadOnlyDictionary<string, string>)) kind = ValueKind.StringMap;
            else if (t.IsClass && t.Namespace == typeof(PipelineDefinition).Namespace) { kind = ValueKind.Object; objectType = t; }
            else throw new InvalidOperationException($"{type.Name}.{p.Name}: configuration type {t} is not supported");

            keys.Add(new ConfigKey(
                name, p, kind, nullable,
                Required: p.GetCustomAttribute<RequiredAttribute>() is not null,
                ScalarOrList: p.GetCustomAttribute<ScalarOrListAttribute>() is not null,
                FingerprintOneAsScalar: p.GetCustomAttribute<ScalarOrListAttribute>()?.FingerprintOneAsScalar == true,
                Fingerprinted: p.GetCustomAttribute<NotFingerprintedAttribute>() is null,
                OmittedWhenUnset: p.GetCustomAttribute<OmittedWhenUnsetAttribute>() is not null,
                enumType, objectType,
                p.GetCustomAttribute<RangeAttribute>(),
                p.GetCustomAttribute<RegularExpressionAttribute>()?.Pattern,
                p.GetCustomAttribute<DescriptionAttribute>()?.Description));
        }
        return keys;
    }
}
