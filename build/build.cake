// FineTune's Cake front end. `./build.sh` (no arguments) runs Demo: build, then the example pipeline.
//   ./build.sh --target=Test
//   ./build.sh --target=Split --pipeline=pipelines/identity      (one task per stage kind: runs it and what it needs)
//   ./build.sh --target=Stage --stage=dpo                        (a stage by its name, e.g. a second train stage)
//   ./build.sh --target=Demo --force=true
//   ./build.sh --target=Pack                                     (only build and pack the finetune .NET tool into artifacts/)
// Stage tasks and Demo call the `finetune` CLI, i.e. the same stage engine as `dotnet build pipelines/<name>`.
// Cake starts in build/; every path below is relative to the repository root.
Context.Environment.WorkingDirectory = MakeAbsolute(Directory(".."));

var target = Argument("target", "Demo");
var configuration = Argument("configuration", "Release");
var pipeline = Argument("pipeline", "pipelines/identity");
var force = Argument("force", false);
var stageName = Argument("stage", "");
// Each pack gets a newer prerelease version, so `dotnet tool update` picks up a rebuilt tool (and not NuGet's cached copy).
var packageVersion = Argument("package-version", $"0.1.0-local.{DateTime.UtcNow:yyyyMMddHHmmss}");

var cli = $"src/FineTune.Cli/bin/{configuration}/net10.0/finetune.dll";

void Finetune(string arguments)
{
    var exit = StartProcess("dotnet", new ProcessSettings
    {
        Arguments = $"\"{cli}\" {arguments}",
        WorkingDirectory = Context.Environment.WorkingDirectory,
    });
    if (exit != 0)
        throw new CakeException(exit, $"finetune {arguments} exited with {exit}");
}

Task("Restore").Does(() => DotNetRestore("FineTune.sln"));

Task("Build").IsDependentOn("Restore").Does(() =>
    DotNetBuild("FineTune.sln", new DotNetBuildSettings { Configuration = configuration, NoRestore = true }));

// The CLI as a .NET tool in artifacts/, then installed into a scratch tool path and run: what the README's first command
// installs is known to start. Install it for real with
//   dotnet tool update --global --add-source ./artifacts --prerelease FineTune.Cli
Task("Pack").IsDependentOn("Build").Does(() =>
{
    DotNetPack("src/FineTune.Cli/FineTune.Cli.csproj", new DotNetPackSettings
    {
        Configuration = configuration, NoBuild = true, NoRestore = true, OutputDirectory = "artifacts",
        MSBuildSettings = new DotNetMSBuildSettings().WithProperty("PackageVersion", packageVersion),
    });
    var toolPath = "artifacts/tool-check";
    if (DirectoryExists(toolPath)) DeleteDirectory(toolPath, new DeleteDirectorySettings { Recursive = true, Force = true });
    var install = StartProcess("dotnet", $"tool install --tool-path {toolPath} --add-source artifacts --version {packageVersion} FineTune.Cli");
    if (install != 0) throw new CakeException(install, $"installing the packed tool {packageVersion} failed");
    var run = StartProcess(System.IO.Path.Combine(toolPath, "finetune"), "--version");
    if (run != 0) throw new CakeException(run, "the installed finetune tool did not start");
    Information($"packed artifacts/FineTune.Cli.{packageVersion}.nupkg; the installed tool starts.");
});

Task("Test").IsDependentOn("Build").Does(() =>
    DotNetTest("FineTune.sln", new DotNetTestSettings { Configuration = configuration, NoBuild = true }));

foreach (var stage in new[] { "download", "register", "split", "train", "eval", "merge", "export" })
{
    var name = char.ToUpperInvariant(stage[0]) + stage.Substring(1);
    Task(name)
        .Description($"Run the {stage} stage of --pipeline (and the stages it needs).")
        .IsDependentOn("Build")
        .Does(() => Finetune($"run \"{pipeline}\" --stage {stage}{(force ? " --force" : "")}"));
}

Task("Stage")
    .Description("Run the stage --stage=NAME of --pipeline (and the stages it needs): any stage, by its name under stages.")
    .IsDependentOn("Build")
    .Does(() =>
    {
        if (stageName.Length == 0)
            throw new CakeException(2, "--target=Stage needs --stage=NAME (a key under stages in the pipeline, e.g. dpo)");
        Finetune($"run \"{pipeline}\" --stage {stageName}{(force ? " --force" : "")}");
    });

Task("Demo")
    .Description("Build and pack the tool, validate and run the example pipeline, then show its status.")
    .IsDependentOn("Pack")
    .Does(() =>
    {
        Finetune($"validate \"{pipeline}\"");
        Finetune($"run \"{pipeline}\"{(force ? " --force" : "")}");
        Finetune($"status \"{pipeline}\"");
    });

Task("CI").IsDependentOn("Test").IsDependentOn("Demo");

RunTarget(target);
