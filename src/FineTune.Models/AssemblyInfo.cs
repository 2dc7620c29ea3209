using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("FineTune.Models.Tests")]
[assembly: InternalsVisibleTo("FineTune.DeviceChecks")]
[assembly: InternalsVisibleTo("FineTune.Training.Tests")]
