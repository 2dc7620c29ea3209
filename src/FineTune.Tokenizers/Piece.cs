namespace FineTune.Tokenizers;

/// <summary>
/// A slice of text on its way through normalisation and pre-tokenisation. <see cref="AtStart"/> is
/// true when the slice begins at offset 0 of the caller's input (Metaspace's "first" prepend scheme
/// needs it).
/// </summary>
internal readonly record struct Piece(ReadOnlyMemory<char> Text, bool AtStart);
