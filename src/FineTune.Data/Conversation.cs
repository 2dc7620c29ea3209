namespace FineTune.Data;

/// <summary>Roles after alignment. User and observation turns sit at even positions, assistant and function at odd.</summary>
public enum ChatRole { User, Assistant, Observation, Function }

public sealed record ChatMessage(ChatRole Role, string Content);

/// <summary>
/// A validated, normalised sample. For supervised data <see cref="Messages"/> alternates prompt/answer and ends with
/// an answer (assistant or function); a pre-training sample is one user message holding the text. Ranking data
/// (pairwise preference) ends with a prompt and carries <see cref="Chosen"/>/<see cref="Rejected"/>. KTO data is
/// supervised data whose last answer is the completion that <see cref="KtoTag"/> marks desirable (true) or not.
/// </summary>
public sealed record Conversation(string Source, string System, string Tools, IReadOnlyList<ChatMessage> Messages,
    ChatMessage? Chosen = null, ChatMessage? Rejected = null, bool? KtoTag = null)
{
    public bool IsPretrainText => Messages.Count == 1 && Messages[0].Role == ChatRole.User && Chosen is null;

    /// <summary>A preference pair: the prompt in <see cref="Messages"/>, the answers in <see cref="Chosen"/> and <see cref="Rejected"/>.</summary>
    public bool IsPair => Chosen is not null;
}

/// <summary>Deterministic pseudo-random numbers (SplitMix64) so that splits and samples are the same on every machine.</summary>
public sealed class SeededRandom(long seed)
{
    private ulong _state = unchecked((ulong)seed);

    public ulong Next()
    {
        var z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform integer in [0, n).</summary>
    public int NextInt(int n) => (int)(Next() % (ulong)n);

    /// <summary>Fisher–Yates permutation of 0..n-1.</summary>
    public int[] Permutation(int n)
    {
        var p = Enumerable.Range(0, n).ToArray();
        for (var i = n - 1; i > 0; i--)
        {
            var j = NextInt(i + 1);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }
}
