using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("FineTune.Tokenizers.Tests")]
