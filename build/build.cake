var target = Argument("target", "Demo");
var configuration = Argument("configuration", "Release");

Task("Restore").Does(() => DotNetRestore("FineTune.sln"));
Task("Build").IsDependentOn("Restore").Does(() =>
    DotNetBuild("FineTune.sln", new DotNetBuildSettings { Configuration = configuration, NoRestore = true }));
Task("Test").IsDependentOn("Build").Does(() =>
    DotNetTest("FineTune.sln", new DotNetTestSettings { Configuration = configuration, NoBuild = true }));
Task("Demo").IsDependentOn("Build");
Task("CI").IsDependentOn("Test").IsDependentOn("Demo");
RunTarget(target);
