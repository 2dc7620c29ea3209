using System.Buffers;
using System.Collections.Concurrent;
using System.Text;

namespace FineTune.Tokenizers;

/// <summary>
/// Byte-pair encoding as HF <c>models::bpe</c>: a word starts as one symbol per char (or per byte
/// when <see cref="ByteLevelInput"/>), then the adjacent pair with the lowest merge rank is merged
/// (leftmost first on ties) until no pair has a merge. A min-heap of candidate merges over a linked
/// list of symbols makes that O(n log n); finished words are cached.
/// </summary>
internal sealed class BpeModel
{
    private const int CacheCapacity = 100_000;
    private const int MaxCachedWordLength = 256;

    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabBySpan;
    private readonly Dictionary<long, (int Rank, int NewId)> _merges;
    private readonly int[] _byteSymbol = new int[256];
    private readonly int? _unkId;
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheBySpan;
    private int _cacheCount;

    public BpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string Left, string Right)> merges, BpeOptions options, string source)
    {
        _vocab = vocab;
        _vocabBySpan = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        _cacheBySpan = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
        Options = options;
        if (options.UnkToken != null)
        {
            if (!vocab.TryGetValue(options.UnkToken, out int unk))
                throw new TokenizerFormatException(source, $"model.unk_token \"{options.UnkToken}\" is not in model.vocab.");
            _unkId = unk;
        }
        int prefixLength = options.ContinuingSubwordPrefix?.Length ?? 0;
        _merges = new Dictionary<long, (int, int)>(merges.Count);
        Span<char> joined = stackalloc char[256];
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (a, b) = merges[rank];
            if (!_vocabBySpan.TryGetValue(a, out int ia) || !_vocabBySpan.TryGetValue(b, out int ib))
                throw new TokenizerFormatException(source, $"model.merges[{rank}] (\"{a}\" \"{b}\") uses a token that is not in model.vocab.");
            var right = prefixLength > 0 && b.Length >= prefixLength ? b.AsSpan(prefixLength) : b.AsSpan();
            int length = a.Length + right.Length;
            Span<char> merged = length <= joined.Length ? joined[..length] : new char[length];
            a.AsSpan().CopyTo(merged);
            right.CopyTo(merged[a.Length..]);
            if (!_vocabBySpan.TryGetValue(merged, out int id))
                throw new TokenizerFormatException(source, $"model.merges[{rank}] (\"{a}\" \"{b}\") produces \"{merged.ToString()}\", which is not in model.vocab.");
            // A repeated pair keeps its last rank, as HF's map does.
            _merges[Key(ia, ib)] = (rank, id);
        }
        for (int b = 0; b < 256; b++)
            _byteSymbol[b] = vocab.TryGetValue(ByteLevelAlphabet.ByteToChar[b].ToString(), out int id) ? id : -1;
    }

    public BpeOptions Options { get; }

    /// <summary>True when pieces arrive un-mapped and the model applies the ByteLevel alphabet itself.</summary>
    public bool ByteLevelInput { get; set; }

    public IReadOnlyDictionary<string, int> Vocab => _vocab;

    private static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    public void Tokenize(ReadOnlySpan<char> word, List<int> ids)
    {
        if (word.IsEmpty) return;
        if (_cacheBySpan.TryGetValue(word, out var cached)) { ids.AddRange(cached); return; }
        int start = ids.Count;
        TokenizeUncached(word, ids);
        if (word.Length <= MaxCachedWordLength && Volatile.Read(ref _cacheCount) < CacheCapacity
            && _cache.TryAdd(word.ToString(), ids.GetRange(start, ids.Count - start).ToArray()))
            Interlocked.Increment(ref _cacheCount);
    }

    private void TokenizeUncached(ReadOnlySpan<char> word, List<int> ids)
    {
        if (ByteLevelInput)
        {
            int max = Encoding.UTF8.GetMaxByteCount(word.Length);
            byte[]? rented = null;
            Span<byte> bytes = max <= 1024 ? stackalloc byte[max] : (rented = ArrayPool<byte>.Shared.Rent(max));
            int n = Encoding.UTF8.GetBytes(word, bytes);
            bytes = bytes[..n];
            if (Options.IgnoreMerges && TryWholeMappedWord(bytes, ids)) { Return(rented); return; }
            var symbols = new SymbolList(n);
            bool plain = Options.ContinuingSubwordPrefix is null or "" && Options.EndOfWordSuffix is null or "";
            if (plain)
            {
                for (int i = 0; i < n; i++)
                {
                    int id = _byteSymbol[bytes[i]];
                    if (id >= 0) { FlushUnknown(ref symbols); symbols.Add(id); }
                    else AddUnknownOrFallback(ref symbols, ByteLevelAlphabet.ByteToChar[bytes[i]].ToString(), 1);
                }
                FlushUnknown(ref symbols);
            }
            else
            {
                var mapped = new StringBuilder(n);
                foreach (byte b in bytes) mapped.Append(ByteLevelAlphabet.ByteToChar[b]);
                AddCharSymbols(mapped.ToString(), ref symbols);
            }
            Return(rented);
            MergeAndEmit(ref symbols, ids);
        }
        else
        {
            if (Options.IgnoreMerges && _vocabBySpan.TryGetValue(word, out int whole)) { ids.Add(whole); return; }
            var symbols = new SymbolList(word.Length);
            AddCharSymbols(word, ref symbols);
            MergeAndEmit(ref symbols, ids);
        }
    }

    private static void Return(byte[]? rented) { if (rented != null) ArrayPool<byte>.Shared.Return(rented); }

    private bool TryWholeMappedWord(ReadOnlySpan<byte> bytes, List<int> ids)
    {
        Span<char> mapped = bytes.Length <= 512 ? stackalloc char[bytes.Length] : new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) mapped[i] = ByteLevelAlphabet.ByteToChar[bytes[i]];
        if (!_vocabBySpan.TryGetValue(mapped, out int id)) return false;
        ids.Add(id);
        return true;
    }

    // Initial symbols for a word: one per char, with the subword prefix on all but the first and the
    // end-of-word suffix on the last; unknown chars become <0xXX> bytes (byte_fallback) or unk.
    private void AddCharSymbols(ReadOnlySpan<char> word, ref SymbolList symbols)
    {
        string? prefix = string.IsNullOrEmpty(Options.ContinuingSubwordPrefix) ? null : Options.ContinuingSubwordPrefix;
        string? suffix = string.IsNullOrEmpty(Options.EndOfWordSuffix) ? null : Options.EndOfWordSuffix;
        int i = 0;
        while (i < word.Length)
        {
            int w = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            bool first = i == 0, last = i + w >= word.Length;
            var ch = word.Slice(i, w);
            int id;
            string? text = null;
            if (prefix == null && suffix == null)
            {
                if (!_vocabBySpan.TryGetValue(ch, out id)) id = -1;
            }
            else
            {
                text = (!first && prefix != null ? prefix : "") + ch.ToString() + (last && suffix != null ? suffix : "");
                if (!_vocab.TryGetValue(text, out id)) id = -1;
            }
            if (id >= 0)
            {
                FlushUnknown(ref symbols);
                symbols.Add(id);
            }
            else
            {
                AddUnknownOrFallback(ref symbols, text ?? ch.ToString(), Encoding.UTF8.GetByteCount(ch));
            }
            i += w;
        }
        FlushUnknown(ref symbols);
    }

    private void AddUnknownOrFallback(ref SymbolList symbols, string text, int byteLength)
    {
        if (Options.ByteFallback)
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            Span<int> fallback = stackalloc int[bytes.Length];
            bool all = true;
            for (int k = 0; k < bytes.Length && all; k++)
                all = _vocab.TryGetValue($"<0x{bytes[k]:X2}>", out fallback[k]);
            if (all)
            {
                // HF adds the byte tokens before flushing a pending unk; kept for identical output.
                foreach (int f in fallback) symbols.Add(f);
                return;
            }
        }
        if (_unkId is int unk)
        {
            if (symbols.PendingUnkBytes > 0 && !Options.FuseUnk) symbols.Add(unk);
            symbols.PendingUnkBytes = Options.FuseUnk && symbols.PendingUnkBytes > 0 ? symbols.PendingUnkBytes + byteLength : byteLength;
        }
    }

    private void FlushUnknown(ref SymbolList symbols)
    {
        if (symbols.PendingUnkBytes > 0 && _unkId is int unk) symbols.Add(unk);
        symbols.PendingUnkBytes = 0;
    }

    private void MergeAndEmit(ref SymbolList symbols, List<int> ids)
    {
        int n = symbols.Count;
        if (n > 1)
        {
            var heap = new MergeHeap(n);
            var id = symbols.Ids;
            var prev = symbols.Prev;
            var next = symbols.Next;
            for (int i = 0; i + 1 < n; i++)
                if (_merges.TryGetValue(Key(id[i], id[i + 1]), out var m)) heap.Push(new Merge(m.Rank, i, m.NewId));
            while (heap.Count > 0)
            {
                var top = heap.Pop();
                int pos = top.Pos;
                if (id[pos] < 0) continue;           // removed by an earlier merge
                int right = next[pos];
                if (right < 0) continue;
                // Stale entry: the pair at pos changed since it was queued.
                if (!_merges.TryGetValue(Key(id[pos], id[right]), out var cur) || cur.NewId != top.NewId) continue;
                id[pos] = top.NewId;
                id[right] = -1;
                int after = next[right];
                next[pos] = after;
                if (after >= 0) prev[after] = pos;
                int before = prev[pos];
                if (before >= 0 && _merges.TryGetValue(Key(id[before], id[pos]), out var l)) heap.Push(new Merge(l.Rank, before, l.NewId));
                if (after >= 0 && _merges.TryGetValue(Key(id[pos], id[after]), out var r)) heap.Push(new Merge(r.Rank, pos, r.NewId));
            }
            heap.Dispose();
        }
        for (int i = 0; i < n; i++) if (symbols.Ids[i] >= 0) ids.Add(symbols.Ids[i]);
        symbols.Dispose();
    }

    private readonly record struct Merge(int Rank, int Pos, int NewId);

    /// <summary>Pooled arrays for a word's symbols as a doubly linked list; a removed symbol has id -1.</summary>
    private struct SymbolList
    {
        public int[] Ids, Prev, Next;
        public int Count;
        public int PendingUnkBytes;

        public SymbolList(int capacity)
        {
            capacity = Math.Max(capacity, 4);
            Ids = ArrayPool<int>.Shared.Rent(capacity);
            Prev = ArrayPool<int>.Shared.Rent(capacity);
            Next = ArrayPool<int>.Shared.Rent(capacity);
            Count = 0;
            PendingUnkBytes = 0;
        }

        public void Add(int id)
        {
            if (Count == Ids.Length) Grow();
            Ids[Count] = id;
            Prev[Count] = Count - 1;
            if (Count > 0) Next[Count - 1] = Count;
            Next[Count] = -1;
            Count++;
        }

        private void Grow()
        {
            Ids = Grown(Ids, Count);
            Prev = Grown(Prev, Count);
            Next = Grown(Next, Count);
        }

        private static int[] Grown(int[] a, int count)
        {
            var bigger = ArrayPool<int>.Shared.Rent(a.Length * 2);
            a.AsSpan(0, count).CopyTo(bigger);
            ArrayPool<int>.Shared.Return(a);
            return bigger;
        }

        public readonly void Dispose()
        {
            ArrayPool<int>.Shared.Return(Ids);
            ArrayPool<int>.Shared.Return(Prev);
            ArrayPool<int>.Shared.Return(Next);
        }
    }

    /// <summary>Binary min-heap ordered by (rank, position), HF's merge order.</summary>
    private struct MergeHeap
    {
        private Merge[] _items;
        public int Count;

        public MergeHeap(int capacity) { _items = ArrayPool<Merge>.Shared.Rent(Math.Max(capacity, 4)); Count = 0; }

        private static bool Less(in Merge a, in Merge b) => a.Rank < b.Rank || (a.Rank == b.Rank && a.Pos < b.Pos);

        public void Push(Merge m)
        {
            if (Count == _items.Length)
            {
                var bigger = ArrayPool<Merge>.Shared.Rent(_items.Length * 2);
                _items.AsSpan(0, Count).CopyTo(bigger);
                ArrayPool<Merge>.Shared.Return(_items);
                _items = bigger;
            }
            int i = Count++;
            while (i > 0)
            {
                int parent = (i - 1) >> 1;
                if (!Less(m, _items[parent])) break;
                _items[i] = _items[parent];
                i = parent;
            }
            _items[i] = m;
        }

        public Merge Pop()
        {
            var top = _items[0];
            var last = _items[--Count];
            int i = 0;
            while (true)
            {
                int child = 2 * i + 1;
                if (child >= Count) break;
                if (child + 1 < Count && Less(_items[child + 1], _items[child])) child++;
                if (!Less(_items[child], last)) break;
                _items[i] = _items[child];
                i = child;
            }
            if (Count > 0) _items[i] = last;
            return top;
        }

        public readonly void Dispose() => ArrayPool<Merge>.Shared.Return(_items);
    }
}

internal sealed record BpeOptions(
    string? UnkToken, bool FuseUnk, bool ByteFallback, bool IgnoreMerges,
    string? ContinuingSubwordPrefix, string? EndOfWordSuffix);
