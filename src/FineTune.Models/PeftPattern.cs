using System.Text.RegularExpressions;

namespace FineTune.Models;

/// <summary>
/// How PEFT resolves rank_pattern and alpha_pattern (peft.utils.other.get_pattern_key): the keys are tried in order and the
/// first that, as a regular expression, matches the module's full name or a dotted suffix of it (<c>^(.*\.)?(key)$</c>) wins.
/// </summary>
public static class PeftPattern
{
    public static T? Lookup<T>(IReadOnlyList<KeyValuePair<string, T>> patterns, string module) where T : struct
    {
        foreach (var (key, value) in patterns)
            if (Matches(key, module)) return value;
        return null;
    }

    public static bool Matches(string key, string module) =>
        Regex.IsMatch(module, $@"^(.*\.)?({key})$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));

    /// <summary>PEFT's LoraLayer scaling: alpha / r, or alpha / √r with rsLoRA.</summary>
    public static double Scale(double alpha, int rank, bool useRslora) => useRslora ? alpha / Math.Sqrt(rank) : alpha / rank;
}
