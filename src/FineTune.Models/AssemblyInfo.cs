using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("FineTune.Models.Tests")]
